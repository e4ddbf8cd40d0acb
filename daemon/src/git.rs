//! Git work in a project, with git2: make sure a repository exists, find or make each story's
//! `[US-PN-XXX]` commit, and make the phase commit. Callers serialise all git work of one
//! project (parallel workers share one working tree).

use std::path::Path;
use std::time::Duration;

use git2::{Commit, IndexAddOption, Oid, Repository, Signature};

pub use crate::git_locks::{clear_stale_locks, retry_locked};
pub use crate::git_stage::{
    entry_with_stat, entry_without_stat, file_mode, is_attributes, plain_config, plain_files, stage_all, stage_folder,
    stage_since,
};
use crate::project::{JsonDoc, StatusFields};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("commit_hash {hash:?} recorded for {story} {why}")]
    BogusHash { story: String, hash: String, why: String },
    #[error(
        "a git lock of {0} (index.lock, HEAD.lock or a branch's) stayed held for {1:?}; another git process is busy"
    )]
    Locked(String, Duration),
}

/// The repository's user.name/user.email, else `sticler <sticler@localhost>`.
pub fn signature(repo: &Repository) -> Result<Signature<'static>, GitError> {
    Ok(repo.signature().or_else(|_| Signature::now("sticler", "sticler@localhost"))?)
}

pub fn head_commit(repo: &Repository) -> Option<Commit<'_>> {
    repo.head().ok()?.peel_to_commit().ok()
}

/// The commit HEAD points at, if there is one.
pub fn head(root: &Path) -> Option<Oid> {
    Some(head_commit(&Repository::open(root).ok()?)?.id())
}

/// The commit the project at `root` has checked out, read through `shared`, an open repository
/// that shares its refs (one of its worktrees): no repository is opened (and its config files
/// read) for it. A project whose `.git` is not a folder is opened after all.
pub fn head_through(shared: &Repository, root: &Path) -> Option<Oid> {
    let git_dir = root.join(".git");
    if !git_dir.is_dir() {
        return head(root);
    }
    let text = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let id = match text.trim().strip_prefix("ref:") {
        Some(name) => shared.refname_to_id(name.trim()).ok()?,
        None => Oid::from_str(text.trim()).ok()?,
    };
    Some(shared.find_commit(id).ok()?.id())
}

/// Which `[story]` commits count as made by a run.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    /// Commits older than this (unix seconds) do not count.
    pub unix: i64,
    /// HEAD when the run started, when known: commits in its history do not count either,
    /// whatever their time says (git keeps whole seconds, so a commit of a run that ended in
    /// the second this one started looks as new as this run's own).
    pub head: Option<Oid>,
}

/// sticler's own temporary files (`.status.json.sticler-<pid>-<n>.tmp`, renamed away within a
/// write) are never staged, by sticler's commits or by a worker's `git add -A`: they are listed
/// in the repository's own `info/exclude`, which git reads and nobody commits.
fn exclude_temp_files(repo: &Repository) {
    const PATTERN: &str = ".*.sticler-*.tmp";
    let path = repo.path().join("info").join("exclude");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.lines().any(|l| l.trim() == PATTERN) {
        return;
    }
    let text = format!(
        "{current}{}# sticler's temporary files\n{PATTERN}\n",
        if current.is_empty() || current.ends_with('\n') { "" } else { "\n" }
    );
    let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, text));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), "cannot exclude sticler's temporary files from git: {e}");
    }
}

/// Process-wide git2 settings, once at start-up, before any thread uses git. libgit2 by default
/// checks that every object a new tree refers to exists; sticler's trees come straight from an
/// index it just wrote, and that check was most of the cost of a commit (a lookup per file of
/// the tree). Trees and commits are kept in the repositories' caches whatever their size (4 KiB
/// by default): the folder of a phase's stories is a tree of ~40 bytes per story, read again by
/// every merge and every move of a worktree.
pub fn configure() {
    git2::opts::strict_object_creation(false);
    for kind in [git2::ObjectType::Tree, git2::ObjectType::Commit] {
        // SAFETY: libgit2's global options are not synchronised; this runs once, before any
        // thread of the daemon touches git.
        if let Err(e) = unsafe { git2::opts::set_cache_object_limit(kind, CACHED_OBJECT_LIMIT) } {
            tracing::warn!("cannot raise git's object cache limit: {e}");
        }
    }
}

/// The largest tree or commit kept in a repository's object cache (1 MiB: ~25,000 stories in
/// one folder).
const CACHED_OBJECT_LIMIT: usize = 1 << 20;

/// Makes sure `root` is a repository with at least one commit ("Initial commit - project
/// setup", everything added). Returns the initial commit when one was made.
pub fn ensure_repo(root: &Path) -> Result<Option<Oid>, GitError> {
    let repo = match Repository::open(root) {
        Ok(repo) => repo,
        Err(_) => Repository::init(root)?,
    };
    exclude_temp_files(&repo);
    if head_commit(&repo).is_some() {
        return Ok(None);
    }
    let tree = repo.find_tree(stage_all(&repo, root)?)?;
    let sig = signature(&repo)?;
    let oid =
        retry_locked(root, || repo.commit(Some("HEAD"), &sig, &sig, "Initial commit - project setup", &tree, &[]))?;
    Ok(Some(oid))
}

pub fn subject_marks(commit: &Commit<'_>, story: &str) -> bool {
    commit.summary().is_some_and(|s| s.starts_with(&format!("[{story}]")))
}

/// The `[US-..]` commits of a project's history, learnt incrementally: each look walks only
/// the commits added since the previous one, so finding every story's commit in a phase costs
/// one walk of the history in all, not one per story.
#[derive(Default)]
pub struct StoryCommits {
    /// HEAD when the history was last walked, and how far back that walk went.
    head: Option<Oid>,
    since_unix: i64,
    by_story: std::collections::HashMap<String, (Oid, i64)>,
}

impl StoryCommits {
    fn refresh(&mut self, repo: &Repository, since_unix: i64) -> Result<(), GitError> {
        if since_unix < self.since_unix {
            // A run that started earlier than the last walk reached: walk again, further.
            *self = StoryCommits::default();
        }
        let Some(head) = head_commit(repo) else { return Ok(()) };
        if self.head == Some(head.id()) {
            return Ok(());
        }
        let mut walk = repo.revwalk()?;
        walk.push(head.id())?;
        // Commits found now are newer than any found by an earlier walk: they replace them.
        let mut found: std::collections::HashMap<String, (Oid, i64)> = std::collections::HashMap::new();
        for oid in walk {
            let oid = oid?;
            if Some(oid) == self.head {
                break;
            }
            let commit = repo.find_commit(oid)?;
            let time = commit.time().seconds();
            if time < since_unix {
                break;
            }
            let story =
                commit.summary().and_then(|s| s.strip_prefix('[')?.split_once(']').map(|(id, _)| id.to_string()));
            if let Some(story) = story {
                // The walk goes from new to old: keep the newest commit of each story.
                found.entry(story).or_insert((oid, time));
            }
        }
        self.by_story.extend(found);
        self.head = Some(head.id());
        self.since_unix = since_unix;
        Ok(())
    }
}

/// One project's repository, kept open between story commits (opening it reads its config and
/// index again, a good part of a commit's cost), with the story commits learnt so far. Held
/// under the project's git lock. Work done on the repository meanwhile (a worker's own commit,
/// the phase commit) is seen: HEAD is read from disk each time and the index is reloaded when
/// its file changed.
#[derive(Default)]
pub struct ProjectGit {
    open: OpenRepo,
    commits: StoryCommits,
}

impl ProjectGit {
    /// The project's open repository (see `reopen`).
    pub fn repo(&mut self, root: &Path) -> Result<&Repository, GitError> {
        reopen(&mut self.open, &mut self.commits, root)
    }
}

/// A repository kept open, with its object cache (trees and commits read once), and the device
/// and inode of its `.git` (a folder, or a worktree's file): a repository removed and made again
/// is opened again.
#[derive(Default)]
pub struct OpenRepo(Option<(Repository, (u64, u64))>);

impl OpenRepo {
    /// The open repository of `root`, and whether it was opened just now.
    pub fn get(&mut self, root: &Path) -> Result<(&mut Repository, bool), GitError> {
        use std::os::unix::fs::MetadataExt;
        let identity = std::fs::metadata(root.join(".git")).map(|m| (m.dev(), m.ino())).ok();
        let reuse = matches!((&self.0, identity), (Some((_, was)), Some(now)) if *was == now);
        if !reuse {
            self.0 = None;
            self.0 = Some((Repository::open(root)?, identity.unwrap_or_default()));
        }
        match &mut self.0 {
            Some((repo, _)) => Ok((repo, !reuse)),
            None => Err(GitError::Git(git2::Error::from_str("repository not open"))),
        }
    }
}

/// The open repository of `root`; the story commits learnt are forgotten when it is opened anew.
fn reopen<'a>(open: &'a mut OpenRepo, commits: &mut StoryCommits, root: &Path) -> Result<&'a Repository, GitError> {
    let (repo, fresh) = open.get(root)?;
    if fresh {
        *commits = StoryCommits::default();
    }
    Ok(repo)
}

/// The commit of `story`: the recorded `commit_hash` (which must exist and carry the story's
/// subject), else a `[story]` commit made since `since_unix`.
pub fn find_story_commit(
    root: &Path,
    story: &str,
    recorded: &str,
    since: Since,
    git: &mut ProjectGit,
) -> Result<Option<Oid>, GitError> {
    let ProjectGit { open, commits: known } = git;
    let repo = reopen(open, known, root)?;
    if !recorded.trim().is_empty() {
        let bogus = |why: String| GitError::BogusHash { story: story.into(), hash: recorded.into(), why };
        let object =
            repo.revparse_single(recorded.trim()).map_err(|_| bogus("does not exist in the repository".into()))?;
        let commit = object.peel_to_commit().map_err(|_| bogus("is not a commit".into()))?;
        if subject_marks(&commit, story) {
            return Ok(Some(commit.id()));
        }
        // Another story's commit (workers sharing a folder: sticler committed in between the
        // worker's commit and its `git rev-parse HEAD`): the story's own commit of this run counts.
        let subject = commit.summary().unwrap_or("").to_string();
        return match own_commit(repo, known, story, since)? {
            Some(oid) => Ok(Some(oid)),
            None => Err(bogus(format!("has subject {subject:?}, which does not start with [{story}]"))),
        };
    }
    own_commit(repo, known, story, since)
}

/// The `[story]` commit made since `since` (not in the history at the run's start).
fn own_commit(repo: &Repository, known: &mut StoryCommits, story: &str, since: Since) -> Result<Option<Oid>, GitError> {
    known.refresh(repo, since.unix)?;
    // In the history at the start: the start itself, or an ancestor of it. Only a commit no
    // later than the start's can be one, which keeps the ancestry walk for the few commits of
    // the start's second (a walk for every story would grow with the run's commits).
    let start = since.head.and_then(|head| Some((head, repo.find_commit(head).ok()?.time().seconds())));
    let before_the_run = |oid: Oid, time: i64| {
        start.is_some_and(|(head, head_time)| {
            head == oid || (time <= head_time && repo.graph_descendant_of(head, oid).unwrap_or(false))
        })
    };
    Ok(known
        .by_story
        .get(story)
        .filter(|(oid, time)| *time >= since.unix && repo.find_commit(*oid).is_ok() && !before_the_run(*oid, *time))
        .map(|(oid, _)| *oid))
}

/// Commits a completed story's changes with the seed's message format. When status.json lists
/// `files_modified`, only those files and the story's own folder are staged; otherwise every
/// change of the working tree.
pub fn commit_story(
    root: &Path,
    story: &str,
    doc: &JsonDoc,
    story_dir: &Path,
    git: &mut ProjectGit,
) -> Result<Oid, GitError> {
    let ProjectGit { open, commits } = git;
    let repo = reopen(open, commits, root)?;
    let files = files_modified(doc, root);
    let tree_id = if files.is_empty() {
        stage_all(repo, root)?
    } else {
        let story_rel = story_dir.strip_prefix(root).unwrap_or(story_dir).to_path_buf();
        retry_locked(root, || {
            let mut index = repo.index()?;
            index.read(false)?;
            for file in &files {
                if root.join(file).exists() {
                    index.add_path(Path::new(file))?;
                } else {
                    // Deleted by the worker; absent from the index is fine too.
                    let _ = index.remove_path(Path::new(file));
                }
            }
            let spec = story_rel.display().to_string();
            index.add_all([spec.as_str()], IndexAddOption::DEFAULT, None)?;
            index.update_all([spec.as_str()], None)?;
            index.write()?;
            index.write_tree()
        })?
    };
    let tree = repo.find_tree(tree_id)?;
    let parent = head_commit(repo);
    let changed = changed_files(repo, parent.as_ref(), &tree)?;
    let message = story_message(story, doc, &changed);
    let sig = signature(repo)?;
    let parents: Vec<&Commit<'_>> = parent.iter().collect();
    retry_locked(root, || repo.commit(Some("HEAD"), &sig, &sig, &message, &tree, &parents))
}

/// `files_modified` as paths relative to the project (absolute ones inside it are made
/// relative; anything outside the project, or with `..`, is ignored).
fn files_modified(doc: &JsonDoc, root: &Path) -> Vec<String> {
    let Some(serde_json::Value::Array(items)) = doc.map.get("files_modified") else { return vec![] };
    items
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|f| {
            let path = Path::new(f);
            let rel = if path.is_absolute() { path.strip_prefix(root).ok()? } else { path };
            let safe = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            (safe && !rel.as_os_str().is_empty()).then(|| rel.display().to_string())
        })
        .collect()
}

/// `A`/`M`/`D` (or `R`, `T`) and path of every file that differs between the parent and `tree`.
pub fn changed_files(
    repo: &Repository,
    parent: Option<&Commit<'_>>,
    tree: &git2::Tree<'_>,
) -> Result<Vec<String>, GitError> {
    let old = match parent {
        Some(c) => Some(c.tree()?),
        None => None,
    };
    Ok(file_lines(&crate::tree_diff::changes(repo, old.as_ref(), tree)?))
}

/// The "Files changed" lines of a story commit's message, one per change.
pub fn file_lines(changes: &[crate::tree_diff::Change]) -> Vec<String> {
    changes.iter().map(|change| format!("- {} {}", change.letter(), change.path.display())).collect()
}

/// The seed's story commit message.
pub fn story_message(story: &str, doc: &JsonDoc, changed: &[String]) -> String {
    let title = doc.title();
    let mut implemented = Vec::new();
    let mut met = Vec::new();
    if let Some(serde_json::Value::Array(criteria)) = doc.map.get("criteria") {
        for c in criteria {
            let text = c.get("text").and_then(|t| t.as_str()).unwrap_or("");
            let notes = c.get("notes").and_then(|t| t.as_str()).unwrap_or("").trim();
            if !notes.is_empty() {
                implemented.push(format!("- {text}: {notes}"));
            }
            if c.get("done").and_then(|d| d.as_bool()) == Some(true) {
                met.push(format!("- [x] {text}"));
            }
        }
    }
    let notes = doc.str_field("worker_notes").trim();
    if !notes.is_empty() {
        implemented.push(format!("- {notes}"));
    }
    if implemented.is_empty() {
        implemented.push(format!("- {title}"));
    }
    let changed = if changed.is_empty() { "- (no file changes)".to_string() } else { changed.join("\n") };
    let met = if met.is_empty() { "- (none marked done)".to_string() } else { met.join("\n") };
    format!(
        "[{story}] {title}\n\n## What was implemented\n{}\n\n## Files changed\n{changed}\n\n## Acceptance criteria met\n{met}\n",
        implemented.join("\n")
    )
}

/// `[Phase N] <title> complete`, listing the stories, over every remaining change (`scope`:
/// only those below that folder).
pub fn commit_phase(
    root: &Path,
    phase: u32,
    title: &str,
    stories: &[(String, String)],
    summary: &str,
    scope: Option<&Path>,
) -> Result<Oid, GitError> {
    let repo = Repository::open(root)?;
    let tree_id = match scope {
        None => stage_all(&repo, root)?,
        Some(dir) => stage_folder(&repo, root, dir)?,
    };
    let tree = repo.find_tree(tree_id)?;
    let list: Vec<String> = stories.iter().map(|(id, t)| format!("- {id}: {t}")).collect();
    let message = format!(
        "[Phase {phase}] {title} complete\n\n## Stories completed\n{}\n\n## Summary\n{summary}\n",
        list.join("\n")
    );
    let sig = signature(&repo)?;
    let parent = head_commit(&repo);
    let parents: Vec<&Commit<'_>> = parent.iter().collect();
    retry_locked(root, || repo.commit(Some("HEAD"), &sig, &sig, &message, &tree, &parents))
}

/// The current branch's name when `origin` exists (None: nothing to push to).
pub fn push_target(root: &Path) -> Result<Option<String>, GitError> {
    let repo = Repository::open(root)?;
    if repo.find_remote("origin").is_err() {
        return Ok(None);
    }
    let head = repo.head()?;
    Ok(head.shorthand().map(str::to_string))
}
