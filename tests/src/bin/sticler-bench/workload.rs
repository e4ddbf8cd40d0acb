//! The workloads: a DAG of trivial stories done by the scripted worker, written as a sticler
//! project, plus the shell command that does one story's work the way an external tool would
//! run it (every iteration back to back, then the commit when sticler would have made it).

use std::path::Path;
use std::process::Command;

use serde_json::json;
use sticler_tests::{bin, story, ProjectBuilder, StorySpec};

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub stories: usize,
    pub width: usize,
    /// Worker runs until a story completes (the worker's `complete_after`).
    pub iterations: u32,
    pub auto_commit: bool,
}

impl Workload {
    /// Layers of `width` stories; each story depends on one or two stories of the layer before.
    pub fn graph(&self) -> Vec<(String, Vec<String>)> {
        let width = self.width;
        (0..self.stories)
            .map(|i| {
                let mut deps = vec![];
                if i >= width {
                    let layer_start = (i / width - 1) * width;
                    deps.push(story_id(layer_start + i % width));
                    deps.push(story_id(layer_start + (i + 1) % width));
                    deps.dedup();
                }
                (story_id(i), deps)
            })
            .collect()
    }

    /// The project's orchestrator.config.json (over the harness's defaults).
    pub fn config(&self, shared: bool) -> serde_json::Value {
        json!({"max_parallel_workers": self.width, "auto_commit": self.auto_commit,
               "max_iterations_per_task": self.iterations + 2,
               "workspace": if shared { "shared" } else { "worktree" }})
    }

    /// A fresh project holding the phase; workers record their start and end in `record_dir`.
    /// Without auto_commit the workers commit their own stories, under every tool.
    pub fn project(&self, record_dir: &Path) -> ProjectBuilder {
        let p = ProjectBuilder::new();
        p.config(self.config(false));
        let script = json!({"record_dir": record_dir.display().to_string(), "commit": !self.auto_commit,
                            "complete_after": self.iterations});
        let list: Vec<StorySpec> = self
            .graph()
            .iter()
            .map(|(id, deps)| {
                let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                story(id, &deps).script(script.clone())
            })
            .collect();
        p.phase(1, "decomposed", &list);
        p
    }

    /// One story's work for make, pueue and the shell loop: the worker `iterations` times in a row
    /// (what an external loop does), then, with auto_commit, a commit of the story folder by the
    /// git CLI, serialised by flock as parallel `git commit`s would collide.
    pub fn story_command(&self, p: &ProjectBuilder, id: &str) -> String {
        let rel = p.story_rel(id);
        let status = p.path().join(&rel).join("status.json");
        let worker = format!(
            "STICLER_STATUS_FILE={} STICLER_PROJECT_DIR={} STICLER_STORY_ID={id} {} > /dev/null",
            status.display(),
            p.path().display(),
            bin("sticler-test-worker").display()
        );
        let work = if self.iterations == 1 {
            worker
        } else {
            format!("for i in $(seq {}); do {worker} || exit 1; done", self.iterations)
        };
        if self.auto_commit {
            format!(
                "{work} && flock .git/bench.lock sh -c 'git add {rel} && git -c user.name=bench \
                 -c user.email=bench@localhost commit --allow-empty -qm \"[{id}] done\"'"
            )
        } else {
            work
        }
    }
}

pub fn story_id(index: usize) -> String {
    format!("US-P1-{:04}", index + 1)
}

/// A repository with everything committed, as sticler makes before the first story.
pub fn git_init(dir: &Path) {
    let git = |args: &[&str]| {
        let ok = Command::new("git").args(args).current_dir(dir).output().expect("git").status.success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "init"]);
}
