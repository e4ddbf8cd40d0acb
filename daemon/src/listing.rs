//! The story folders of a phase, kept current by inotify so that `status` of a large phase
//! costs the stories that changed, not one `stat` per story.
//!
//! A listing is built by reading `stories/` once, with a watch on `stories/` and on every story
//! folder placed before that folder is read. Any event in a story folder marks that story for a
//! fresh read; any event on `stories/` itself (a folder added, removed or renamed) or a lost
//! event (queue overflow) throws the listing away. Without inotify, or when a watch cannot be
//! added (the user's watch limit), the phase is simply read the slow way every time.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use sticler_proto::Problem;

use crate::phase::{StoryFiles, STATUS_FILE};
use crate::project::{DocCache, JsonDoc, ProjectError, StoryId};

/// Watches held at most; past it every listing is dropped and rebuilt on demand.
const WATCH_LIMIT: usize = 50_000;

/// Story folders and folder problems of one `stories/` folder, sorted by id.
pub struct Stories {
    pub stories: Vec<StoryFiles>,
    pub problems: Vec<Problem>,
}

pub struct Listings {
    docs: DocCache,
    inotify: Option<Inotify>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    listings: HashMap<PathBuf, Listing>,
    /// What each watch is on: a `stories/` folder, or one story folder of it.
    watches: HashMap<WatchDescriptor, Watched>,
}

enum Watched {
    Listing(PathBuf),
    Story { listing: PathBuf, index: usize },
}

struct Listing {
    /// Device and inode of `stories/`: a folder put in its place is a different listing.
    identity: (u64, u64),
    watches: Vec<WatchDescriptor>,
    entries: Vec<Entry>,
    problems: Vec<Problem>,
    /// Indexes of entries to read again.
    dirty: HashSet<usize>,
}

struct Entry {
    id: StoryId,
    dir: PathBuf,
    /// None when the last read failed (a symlink, too, is refused): read it again on every
    /// request.
    status: Option<Arc<JsonDoc>>,
}

const STORY_EVENTS: AddWatchFlags = AddWatchFlags::from_bits_truncate(
    AddWatchFlags::IN_MODIFY.bits()
        | AddWatchFlags::IN_ATTRIB.bits()
        | AddWatchFlags::IN_CLOSE_WRITE.bits()
        | AddWatchFlags::IN_CREATE.bits()
        | AddWatchFlags::IN_DELETE.bits()
        | AddWatchFlags::IN_MOVED_FROM.bits()
        | AddWatchFlags::IN_MOVED_TO.bits()
        | AddWatchFlags::IN_DELETE_SELF.bits()
        | AddWatchFlags::IN_MOVE_SELF.bits()
        | AddWatchFlags::IN_ONLYDIR.bits()
        | AddWatchFlags::IN_DONT_FOLLOW.bits(),
);

impl Default for Listings {
    fn default() -> Self {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::warn!("inotify unavailable ({e}); status reads every story file each time"))
            .ok();
        Listings { docs: DocCache::default(), inotify, state: Mutex::default() }
    }
}

impl Listings {
    /// Listings read the plain way, with no inotify watches: for a one-off read of a phase
    /// (`sticlerctl validate` without a daemon), where watches would only cost.
    pub fn unwatched() -> Listings {
        Listings { docs: DocCache::default(), inotify: None, state: Mutex::default() }
    }

    /// The story folders under `stories_dir` (of phase `phase`) with their status.json parsed.
    pub fn stories(&self, stories_dir: &Path, phase: u32) -> Result<Stories, ProjectError> {
        let meta = match fs::metadata(stories_dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Stories { stories: vec![], problems: vec![] })
            }
            Err(e) => return Err(ProjectError::io(stories_dir, e)),
        };
        let identity = (meta.dev(), meta.ino());
        let Some(inotify) = &self.inotify else {
            return scan(stories_dir, phase, &self.docs, |_| Ok(None::<WatchDescriptor>)).map(|(stories, _)| stories);
        };
        let mut state = crate::lock::lock(&self.state);
        state.drain(inotify);
        if let Some(listing) = state.listings.get_mut(stories_dir) {
            if listing.identity == identity {
                return listing.refresh(stories_dir, &self.docs);
            }
        }
        state.forget(inotify, stories_dir);
        if state.watches.len() >= WATCH_LIMIT {
            for dir in state.listings.keys().cloned().collect::<Vec<_>>() {
                state.forget(inotify, &dir);
            }
        }
        let stories_wd = match inotify.add_watch(stories_dir, STORY_EVENTS) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}", stories_dir.display());
                return scan(stories_dir, phase, &self.docs, |_| Ok(None::<WatchDescriptor>))
                    .map(|(stories, _)| stories);
            }
        };
        let watched = scan(stories_dir, phase, &self.docs, |dir| inotify.add_watch(dir, STORY_EVENTS).map(Some));
        let (stories, story_wds) = match watched {
            Ok(found) => found,
            Err(e) => {
                let _ = inotify.rm_watch(stories_wd);
                return Err(e);
            }
        };
        let mut listing = Listing {
            identity,
            watches: vec![stories_wd],
            entries: Vec::with_capacity(stories.stories.len()),
            problems: stories.problems.clone(),
            dirty: HashSet::new(),
        };
        state.watches.insert(stories_wd, Watched::Listing(stories_dir.to_path_buf()));
        for (index, (story, wd)) in stories.stories.iter().zip(story_wds).enumerate() {
            let Some(wd) = wd else {
                // A folder that could not be watched: read it the slow way every time.
                listing.dirty.insert(index);
                listing.entries.push(Entry { id: story.id.clone(), dir: story.dir.clone(), status: None });
                continue;
            };
            listing.watches.push(wd);
            state.watches.insert(wd, Watched::Story { listing: stories_dir.to_path_buf(), index });
            let status = story.status.as_ref().ok().cloned();
            if status.is_none() {
                listing.dirty.insert(index);
            }
            listing.entries.push(Entry { id: story.id.clone(), dir: story.dir.clone(), status });
        }
        state.listings.insert(stories_dir.to_path_buf(), listing);
        Ok(stories)
    }
}

impl State {
    /// Applies every pending event: which stories to read again, which listings to drop.
    fn drain(&mut self, inotify: &Inotify) {
        loop {
            let events = match inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                _ => return,
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    for dir in self.listings.keys().cloned().collect::<Vec<_>>() {
                        self.forget(inotify, &dir);
                    }
                    continue;
                }
                match self.watches.get(&event.wd) {
                    Some(Watched::Listing(dir)) => {
                        let dir = dir.clone();
                        self.forget(inotify, &dir);
                    }
                    Some(Watched::Story { listing, index }) => {
                        if let Some(listing) = self.listings.get_mut(listing) {
                            listing.dirty.insert(*index);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    fn forget(&mut self, inotify: &Inotify, stories_dir: &Path) {
        if let Some(listing) = self.listings.remove(stories_dir) {
            for wd in listing.watches {
                self.watches.remove(&wd);
                // Fails harmlessly for a folder already gone (the kernel dropped its watch).
                let _ = inotify.rm_watch(wd);
            }
        }
    }
}

impl Listing {
    fn refresh(&mut self, stories_dir: &Path, docs: &DocCache) -> Result<Stories, ProjectError> {
        let dir_fd = fs::File::open(stories_dir).map_err(|e| ProjectError::io(stories_dir, e))?;
        let mut stories = Vec::with_capacity(self.entries.len());
        let mut still_dirty = HashSet::new();
        for (index, entry) in self.entries.iter_mut().enumerate() {
            let status = match &entry.status {
                Some(doc) if !self.dirty.contains(&index) => Ok(Arc::clone(doc)),
                _ => {
                    let rel = Path::new(entry.dir.file_name().unwrap_or_default()).join(STATUS_FILE);
                    let read = read_status(docs, &dir_fd, &rel, &entry.dir.join(STATUS_FILE));
                    let watchable =
                        fs::symlink_metadata(entry.dir.join(STATUS_FILE)).map_or(true, |m| !m.file_type().is_symlink());
                    entry.status = read.as_ref().ok().filter(|_| watchable).cloned();
                    if entry.status.is_none() {
                        still_dirty.insert(index);
                    }
                    read
                }
            };
            stories.push(StoryFiles { id: entry.id.clone(), dir: entry.dir.clone(), status });
        }
        self.dirty = still_dirty;
        Ok(Stories { stories, problems: self.problems.clone() })
    }
}

/// Reads `stories/` the plain way. `watch` is called on each story folder before its status.json
/// is read, so that a change after the read is never missed.
fn scan<W>(
    stories_dir: &Path,
    phase: u32,
    docs: &DocCache,
    mut watch: impl FnMut(&Path) -> nix::Result<Option<W>>,
) -> Result<(Stories, Vec<Option<W>>), ProjectError> {
    let entries = match fs::read_dir(stories_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Stories { stories: vec![], problems: vec![] }, vec![]))
        }
        Err(e) => return Err(ProjectError::io(stories_dir, e)),
    };
    let dir_fd = fs::File::open(stories_dir).map_err(|e| ProjectError::io(stories_dir, e))?;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ProjectError::io(stories_dir, e))?;
        let path = entry.path();
        let problem = |message: String| Problem { path: path.display().to_string(), message };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            problems.push(problem("story folder name is not valid UTF-8".into()));
            continue;
        };
        let file_type = entry.file_type().map_err(|e| ProjectError::io(&path, e))?;
        if file_type.is_symlink() {
            // A symlink could lead sticler (and the worker) outside the project.
            problems.push(problem("story folder is a symlink; sticler only uses real folders".into()));
            continue;
        }
        if !file_type.is_dir() {
            continue;
        }
        let id = match StoryId::parse_checked(&name) {
            Ok(id) => id,
            Err(sticler_proto::StoryIdError::NotAnId(_)) => {
                problems
                    .push(problem(format!("folder name {name:?} is not a story id of the form US-P{phase}-<digits>")));
                continue;
            }
            Err(e) => {
                problems.push(problem(format!("folder name {e}")));
                continue;
            }
        };
        if id.phase != phase {
            problems
                .push(problem(format!("story {id} belongs to phase {}, but its folder is in phase {phase}", id.phase)));
            continue;
        }
        let wd = watch(&path).unwrap_or_else(|e| {
            tracing::debug!("cannot watch {}: {e}", path.display());
            None
        });
        let status = read_status(docs, &dir_fd, &Path::new(&name).join(STATUS_FILE), &path.join(STATUS_FILE));
        found.push((StoryFiles { id, dir: path, status }, wd));
    }
    found.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let (stories, wds) = found.into_iter().unzip();
    Ok((Stories { stories, problems }, wds))
}

/// A story's status.json, parsed and type-checked: a field of the wrong type makes the story
/// invalid like a syntax error does (the listing then reads it again on every request).
fn read_status(docs: &DocCache, dir_fd: &fs::File, rel: &Path, path: &Path) -> Result<Arc<JsonDoc>, ProjectError> {
    let doc = docs.read_at(dir_fd, rel, path)?;
    doc.check_status_fields()?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_story(stories: &Path, id: &str, focus: &str) {
        let dir = stories.join(id);
        fs::create_dir_all(&dir).expect("mkdir");
        let body = format!(r#"{{"story_id": "{id}", "status": "pending", "focus": "{focus}"}}"#);
        crate::project::write_atomic(&dir.join(STATUS_FILE), body.as_bytes()).expect("write");
    }

    fn focus(listings: &Listings, stories: &Path) -> Vec<String> {
        let found = listings.stories(stories, 1).expect("stories");
        found
            .stories
            .iter()
            .map(|s| match &s.status {
                Ok(doc) => format!("{}={}", s.id, doc.str_field("focus")),
                Err(_) => format!("{}=error", s.id),
            })
            .collect()
    }

    #[test]
    fn changes_between_requests_are_seen() {
        let tmp = tempfile::tempdir().expect("tmp");
        let stories = tmp.path().join("stories");
        write_story(&stories, "US-P1-001", "a");
        write_story(&stories, "US-P1-002", "b");
        let listings = Listings::default();
        assert!(listings.inotify.is_some(), "inotify is available on Linux");
        assert_eq!(focus(&listings, &stories), ["US-P1-001=a", "US-P1-002=b"]);
        assert_eq!(focus(&listings, &stories), ["US-P1-001=a", "US-P1-002=b"]);

        // An atomic rewrite, an in-place write, a new story, a removed story, a broken file.
        write_story(&stories, "US-P1-001", "a2");
        assert_eq!(focus(&listings, &stories), ["US-P1-001=a2", "US-P1-002=b"]);
        fs::write(stories.join("US-P1-002").join(STATUS_FILE), r#"{"status": "pending", "focus": "b2"}"#)
            .expect("write");
        assert_eq!(focus(&listings, &stories), ["US-P1-001=a2", "US-P1-002=b2"]);
        write_story(&stories, "US-P1-003", "c");
        assert_eq!(focus(&listings, &stories), ["US-P1-001=a2", "US-P1-002=b2", "US-P1-003=c"]);
        fs::remove_dir_all(stories.join("US-P1-001")).expect("rm");
        assert_eq!(focus(&listings, &stories), ["US-P1-002=b2", "US-P1-003=c"]);
        fs::write(stories.join("US-P1-003").join(STATUS_FILE), "{").expect("write");
        assert_eq!(focus(&listings, &stories), ["US-P1-002=b2", "US-P1-003=error"]);
        write_story(&stories, "US-P1-003", "c2");
        assert_eq!(focus(&listings, &stories), ["US-P1-002=b2", "US-P1-003=c2"]);

        // Another folder put in the place of stories/.
        let other = tmp.path().join("other");
        write_story(&other, "US-P1-009", "z");
        fs::rename(&stories, tmp.path().join("old")).expect("mv");
        fs::rename(&other, &stories).expect("mv");
        assert_eq!(focus(&listings, &stories), ["US-P1-009=z"]);
    }

    #[test]
    fn a_status_file_that_is_a_symlink_is_refused_until_replaced() {
        let tmp = tempfile::tempdir().expect("tmp");
        let stories = tmp.path().join("stories");
        write_story(&stories, "US-P1-001", "a");
        let target = tmp.path().join("elsewhere.json");
        fs::write(&target, r#"{"status": "pending", "focus": "x"}"#).expect("write");
        let link = stories.join("US-P1-001").join(STATUS_FILE);
        fs::remove_file(&link).expect("rm");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let listings = Listings::default();
        // It could lead outside the project: never read through.
        assert_eq!(focus(&listings, &stories), ["US-P1-001=error"]);
        assert_eq!(focus(&listings, &stories), ["US-P1-001=error"]);
        write_story(&stories, "US-P1-001", "real");
        assert_eq!(focus(&listings, &stories), ["US-P1-001=real"]);
    }
}
