//! Reading a whole phase from disk and checking it before anything runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use sticler_proto::{Problem, ValidationReport};

use std::sync::Arc;

use crate::listing::{Listings, Stories};
use crate::project::{JsonDoc, OrchestratorConfig, Project, ProjectError, StatusFields, StoryId, CONFIG_FILE};

pub const PHASE_CONFIG: &str = "phase_config.json";
pub const STATUS_FILE: &str = "status.json";
pub const SPEC_FILE: &str = "spec.md";

/// One story folder as found on disk.
#[derive(Debug)]
pub struct StoryFiles {
    pub id: StoryId,
    pub dir: PathBuf,
    pub status: Result<Arc<JsonDoc>, ProjectError>,
}

impl StoryFiles {
    pub fn status_path(&self) -> PathBuf {
        self.dir.join(STATUS_FILE)
    }
    pub fn spec_path(&self) -> PathBuf {
        self.dir.join(SPEC_FILE)
    }
}

/// A phase as found on disk. Reading never fails on a bad story: problems are collected.
#[derive(Debug)]
pub struct PhaseFiles {
    pub number: u32,
    pub dir: PathBuf,
    pub config: Result<JsonDoc, ProjectError>,
    /// Sorted by id.
    pub stories: Vec<StoryFiles>,
    /// Folders under stories/ that are not stories sticler can use.
    pub problems: Vec<Problem>,
}

impl PhaseFiles {
    pub fn load(project: &Project, number: u32, listings: &Listings) -> Result<PhaseFiles, ProjectError> {
        let dir = project.phase_dir(number);
        if !dir.is_dir() {
            return Err(ProjectError::NoPhase { project: project.root.clone(), phase: number });
        }
        let stories_dir = dir.join("stories");
        // Symlinked folders could lead sticler (and the worker) outside the project.
        for folder in [&dir, &stories_dir] {
            if fs::symlink_metadata(folder).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(ProjectError::Invalid {
                    path: folder.clone(),
                    message: "is a symlink; sticler only uses real folders inside the project".into(),
                });
            }
        }
        let config = read_config(&dir);
        let Stories { stories, problems } = listings.stories(&stories_dir, number)?;
        Ok(PhaseFiles { number, dir, config, stories, problems })
    }

    /// Every reason this phase cannot run, in a stable order. Empty means valid.
    pub fn validate(&self, project: &Project) -> Vec<Problem> {
        let mut problems = self.problems.clone();
        if let Err(e) = &self.config {
            push(&mut problems, &self.dir.join(PHASE_CONFIG), e.detail());
        }
        let ids: BTreeSet<&str> = self.stories.iter().map(|s| s.id.as_str()).collect();
        let mut claimed: HashMap<String, &PathBuf> = HashMap::new();
        let mut edges: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for story in &self.stories {
            check_spec(story, &mut problems);
            let doc = match &story.status {
                Ok(doc) => doc,
                Err(e) => {
                    push(&mut problems, &story.status_path(), e.detail());
                    continue;
                }
            };
            let declared = doc.str_field("story_id");
            if declared.is_empty() {
                let message =
                    format!("status.json has no story_id; add \"story_id\": \"{}\" (its folder's name)", story.id);
                push(&mut problems, &story.status_path(), message);
            } else if declared != story.id.as_str() {
                push(
                    &mut problems,
                    &story.status_path(),
                    format!("story_id {declared:?} does not match its folder {}", story.id),
                );
            }
            if let Some(first) = claimed.insert(declared.to_string(), &story.dir) {
                if !declared.is_empty() {
                    push(
                        &mut problems,
                        &story.status_path(),
                        format!("duplicate story id {declared}: also claimed by {}", first.display()),
                    );
                }
            }
            let deps = self.check_dependencies(project, story, doc.dependencies(), &ids, &mut problems);
            edges.insert(story.id.as_str(), deps);
        }
        // A cycle may pass through other phases: their stories this phase reaches join the graph.
        let elsewhere = reached_elsewhere(project, &edges);
        edges.extend(elsewhere.iter().map(|(id, deps)| (id.as_str(), deps.clone())));
        if let Some(cycle) = find_cycle(&edges) {
            push(&mut problems, &self.dir.join("stories"), format!("dependency cycle: {}", cycle.join(" -> ")));
        }
        problems
    }

    /// What `validate` reports and `status` shows: the phase's problems (`validate`), then
    /// those of the project's orchestrator.config.json.
    pub fn report_problems(&self, project: &Project) -> Vec<Problem> {
        let mut problems = self.validate(project);
        if let Err(e) = OrchestratorConfig::load(&project.root) {
            push(&mut problems, &project.root.join(CONFIG_FILE), e.detail());
        }
        problems
    }

    /// Each dependency names a story of this phase or an existing story of an earlier phase.
    /// Returns the dependencies that are story ids, for the cycle check.
    fn check_dependencies(
        &self,
        project: &Project,
        story: &StoryFiles,
        dependencies: &[String],
        ids: &BTreeSet<&str>,
        problems: &mut Vec<Problem>,
    ) -> Vec<String> {
        let mut linked = Vec::new();
        for dep in dependencies {
            match StoryId::parse_checked(dep) {
                Err(e) => push(problems, &story.status_path(), format!("dependency {e}")),
                Ok(dep_id) if dep_id.phase == self.number => {
                    if ids.contains(dep_id.as_str()) {
                        linked.push(dep.clone());
                    } else {
                        push(
                            problems,
                            &story.status_path(),
                            format!("unknown dependency {dep}: no such story in this phase"),
                        );
                    }
                }
                // Phases run in order: a story cannot wait for one of a phase that comes after
                // its own (that phase's start would wait for this one in turn).
                Ok(dep_id) if dep_id.phase > self.number => {
                    let message = format!(
                        "dependency {dep} is in phase {}, after this phase {}; a story may depend only on stories of its own or earlier phases",
                        dep_id.phase, self.number
                    );
                    push(problems, &story.status_path(), message);
                    // Still an edge: a cycle through it is shown too.
                    linked.push(dep.clone());
                }
                Ok(dep_id) => {
                    if project.story_dir(&dep_id).join(STATUS_FILE).is_file() {
                        linked.push(dep.clone());
                    } else {
                        let dir = project.story_dir(&dep_id);
                        let message = format!("unknown dependency {dep}: no status.json in {}", dir.display());
                        push(problems, &story.status_path(), message);
                    }
                }
            }
        }
        linked
    }
}

/// The stories of other phases that this phase's dependencies reach, directly or through one
/// another, with their own dependencies (each status.json read once; an unreadable one has none:
/// its own phase's validation reports it).
fn reached_elsewhere(project: &Project, edges: &BTreeMap<&str, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue: Vec<String> = edges.values().flatten().cloned().collect();
    while let Some(id) = queue.pop() {
        if edges.contains_key(id.as_str()) || found.contains_key(&id) {
            continue;
        }
        let Some(story) = StoryId::parse(&id) else { continue };
        let status = project.story_dir(&story).join(STATUS_FILE);
        let deps = JsonDoc::read(&status).map(|doc| doc.dependencies().to_vec()).unwrap_or_default();
        queue.extend(deps.iter().cloned());
        found.insert(id, deps);
    }
    found
}

/// The phase_config.json of the phase folder `dir`, which exists. A missing file is said in
/// words, the same for every command (never a bare "No such file or directory").
fn read_config(dir: &Path) -> Result<JsonDoc, ProjectError> {
    let path = dir.join(PHASE_CONFIG);
    JsonDoc::read(&path).map_err(|e| match e {
        ProjectError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ProjectError::Invalid {
            path,
            message: "missing; every phase folder needs a phase_config.json (with its title and status)".into(),
        },
        other => other,
    })
}

/// The phase_config.json of phase `phase`: `NoPhase` when the phase folder does not exist.
pub fn phase_config(project: &Project, phase: u32) -> Result<JsonDoc, ProjectError> {
    let dir = project.phase_dir(phase);
    if !dir.is_dir() {
        return Err(ProjectError::NoPhase { project: project.root.clone(), phase });
    }
    read_config(&dir)
}

/// What `validate` answers for phase `phase` of the project at `dir`: the phase's problems and
/// those of orchestrator.config.json. The daemon and, without one, sticlerctl both call this,
/// so the report is the same wherever it is made.
pub fn validation_report(dir: &Path, phase: u32, listings: &Listings) -> Result<ValidationReport, ProjectError> {
    let project = Project::open(dir)?;
    let files = PhaseFiles::load(&project, phase, listings)?;
    let problems = files.report_problems(&project);
    Ok(ValidationReport {
        project: project.root.display().to_string(),
        phase,
        stories: files.stories.len() as u32,
        problems,
    })
}

fn push(problems: &mut Vec<Problem>, path: &Path, message: String) {
    problems.push(Problem { path: path.display().to_string(), message });
}

/// spec.md must be a regular file: the worker gets only regular files inside the project.
fn check_spec(story: &StoryFiles, problems: &mut Vec<Problem>) {
    match fs::symlink_metadata(story.spec_path()) {
        Ok(meta) if meta.file_type().is_symlink() => push(
            problems,
            &story.spec_path(),
            "spec.md is a symlink; the worker only gets regular files inside the project".into(),
        ),
        Ok(meta) if meta.is_file() => {}
        _ => push(problems, &story.spec_path(), "missing spec.md".into()),
    }
}

/// Finds one dependency cycle, iteratively (a 10,000-long chain must not overflow the stack).
/// Returns it as `a -> b -> … -> a`.
pub fn find_cycle(edges: &BTreeMap<&str, Vec<String>>) -> Option<Vec<String>> {
    // Drop, again and again, the stories none of whose dependencies are left. Every story that
    // remains then has a dependency that remains too, so following dependencies from any of
    // them must come back round to a story already seen.
    let inside = |d: &String| edges.contains_key(d.as_str());
    let mut left: HashMap<&str, usize> =
        edges.iter().map(|(k, deps)| (*k, deps.iter().filter(|d| inside(d)).count())).collect();
    let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
    for (story, deps) in edges {
        for dep in deps.iter().filter(|d| inside(d)) {
            dependents.entry(dep.as_str()).or_default().push(story);
        }
    }
    let mut queue: Vec<&str> = left.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
    while let Some(node) = queue.pop() {
        left.remove(node);
        for dependent in dependents.get(node).into_iter().flatten() {
            if let Some(n) = left.get_mut(dependent) {
                *n -= 1;
                if *n == 0 {
                    queue.push(dependent);
                }
            }
        }
    }
    let start = left.keys().min()?;
    let mut path: Vec<&str> = vec![start];
    let mut seen: HashMap<&str, usize> = HashMap::from([(*start, 0)]);
    loop {
        let current = path[path.len() - 1];
        let next = edges.get(current)?.iter().map(String::as_str).filter(|d| left.contains_key(d)).min()?;
        if let Some(&at) = seen.get(next) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return Some(cycle);
        }
        seen.insert(next, path.len());
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(list: &[(&'static str, &[&str])]) -> BTreeMap<&'static str, Vec<String>> {
        list.iter().map(|(k, v)| (*k, v.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn cycle_is_printed_in_dependency_order() {
        let e = edges(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(find_cycle(&e).unwrap(), ["a", "b", "c", "a"]);
        let e = edges(&[("a", &["a"])]);
        assert_eq!(find_cycle(&e).unwrap(), ["a", "a"]);
        // A cycle whose members also depend on a story outside it.
        let e = edges(&[("s1", &[]), ("s2", &["s3", "s1"]), ("s3", &["s2"])]);
        assert_eq!(find_cycle(&e).unwrap(), ["s2", "s3", "s2"]);
    }

    #[test]
    fn acyclic_graphs_have_no_cycle_even_when_long() {
        let names: Vec<String> = (0..10_000).map(|i| format!("s{i:05}")).collect();
        let mut e: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            e.insert(name, if i == 0 { vec![] } else { vec![names[i - 1].clone()] });
        }
        assert!(find_cycle(&e).is_none());
        e.insert(&names[0], vec![names[9_999].clone()]);
        assert_eq!(find_cycle(&e).unwrap().len(), 10_001);
    }
}
