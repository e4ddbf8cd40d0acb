//! The CLI people use by hand: the live view in a real terminal (tmux), colours and NO_COLOR,
//! completions, the man page, examples in every --help.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sticler_tests::{bin, describe, have_tool, story, Daemon, ProjectBuilder};

/// A private tmux server (its own socket name) with a shell in a 150x40 pane, where the test
/// types commands like a user; killed on drop.
struct Tmux {
    server: String,
}

impl Tmux {
    fn shell(name: &str) -> Tmux {
        Tmux::shell_sized(name, 150)
    }

    /// A shell in a pane `columns` wide.
    fn shell_sized(name: &str, columns: u32) -> Tmux {
        let tmux = Tmux { server: format!("sticler-test-{}-{name}", std::process::id()) };
        let columns = columns.to_string();
        let out = tmux
            .cmd()
            .args(["new-session", "-d", "-x", &columns, "-y", "40", "-s", "t", "sh"])
            .output()
            .expect("run tmux (apt-get install tmux; .ci/run does it)");
        assert!(out.status.success(), "tmux new-session: {}", describe(&out));
        tmux
    }

    /// Types `keys` into the pane (`Enter`, `C-c` are key names).
    fn send_keys(&self, keys: &[&str]) {
        let out = self.cmd().args(["send-keys", "-t", "t"]).args(keys).output().expect("tmux send-keys");
        assert!(out.status.success(), "tmux send-keys: {}", describe(&out));
    }

    fn cmd(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.server, "-f", "/dev/null"]);
        command
    }

    /// The visible screen; with `escapes`, including the colour codes of each cell.
    fn screen(&self, escapes: bool) -> String {
        let mut command = self.cmd();
        command.args(["capture-pane", "-p", "-t", "t"]);
        if escapes {
            command.arg("-e");
        }
        String::from_utf8_lossy(&command.output().expect("tmux capture-pane").stdout).into_owned()
    }

    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = poll_or(Duration::from_secs(30), || {
            last = self.screen(false);
            check(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("timed out waiting for {what}; screen:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

fn poll_or<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command line a user types: sticlerctl against `daemon` in `project`, then its exit
/// code as `[sticlerctl exit=N]` (typed as two words, so the typed line itself never matches).
fn ctl_line(daemon: &Daemon, project: &ProjectBuilder, env: &str, args: &str) -> String {
    format!(
        "env -u NO_COLOR {env} {} --socket {} -C {} {args}; echo \"[sticlerctl\" \"exit=$?]\"",
        bin("sticlerctl").display(),
        daemon.socket.display(),
        project.path_str()
    )
}

/// Three stories (two in parallel, then one after both), three slow iterations each.
fn slow_phase() -> ProjectBuilder {
    let p = ProjectBuilder::new();
    let slow = json!({"sleep_ms": 400});
    let s = |id: &str, deps: &[&str]| story(id, deps).criteria(3).script(slow.clone());
    p.phase(1, "decomposed", &[s("US-P1-001", &[]), s("US-P1-002", &[]), s("US-P1-003", &["US-P1-001", "US-P1-002"])]);
    p
}

/// In a 64-column terminal the bar and the story lines are cut to the width, never wrapped
/// (a wrapped line is redrawn badly: "1 bl / ocked").
#[test]
fn the_live_view_fits_a_narrow_terminal() {
    let daemon = Daemon::start();
    let p = slow_phase();
    if !have_tool("tmux", "tmux") {
        return;
    }
    let tmux = Tmux::shell_sized("narrow", 64);
    tmux.send_keys(&[&ctl_line(&daemon, &p, "", "start 1 --wait"), "Enter"]);
    tmux.wait_screen("two running story lines", |s| {
        s.lines().filter(|l| l.contains("US-P1-00") && l.contains("running")).count() == 2
    });
    // A wrapped line leaves its tail on a line of its own ("ocked"): the bar and the story lines
    // under it are whole (events above them are plain text the terminal may wrap).
    let screen = tmux.screen(false);
    let output = screen.lines().skip_while(|l| !l.contains("stories completed")).map(str::trim);
    for line in output.filter(|l| !l.is_empty()) {
        assert!(line.contains("phase 1") || line.contains("US-P1-00"), "{line:?} in\n{screen}");
    }
    for line in screen.lines().filter(|l| l.contains("stories completed") || l.contains("criteria ")) {
        assert!(line.trim_end().chars().count() <= 64, "{line:?}");
    }
    tmux.wait_screen("sticlerctl's exit", |s| s.contains("[sticlerctl exit="));
}

#[test]
fn start_wait_in_a_terminal_shows_running_stories_and_an_overall_bar() {
    let daemon = Daemon::start();
    let p = slow_phase();
    if !have_tool("tmux", "tmux") {
        return;
    }
    let tmux = Tmux::shell("wait");
    tmux.send_keys(&[&ctl_line(&daemon, &p, "", "start 1 --wait"), "Enter"]);

    // One line per running story: id, state, iteration, criteria done/total, and the bar.
    let screen = tmux.wait_screen("two running story lines", |s| {
        s.lines().filter(|l| l.contains("US-P1-00") && l.contains("running") && l.contains("iteration")).count() == 2
    });
    assert!(screen.contains("criteria 0/3") || screen.contains("criteria 1/3"), "{screen}");
    assert!(screen.contains("phase 1 Test phase 1 ["), "no overall bar:\n{screen}");
    assert!(screen.contains("0/3 stories completed"), "{screen}");
    // The focus the worker wrote to status.json shows once an iteration has ended.
    tmux.wait_screen("a story's focus", |s| s.lines().any(|l| l.contains("running") && l.contains("criterion ")));
    // Events scroll above the bars.
    tmux.wait_screen("an event line", |s| s.contains("US-P1-001 iteration 1 started"));

    let screen = tmux.wait_screen("sticlerctl's exit", |s| s.contains("[sticlerctl exit="));
    assert!(screen.contains("[sticlerctl exit=0]"), "{screen}\n{}", daemon.dump(p.path()));
    assert!(screen.contains("3/3 stories completed"), "{screen}");
    assert!(screen.contains("phase completed"), "{screen}");
    // Story lines are gone at the end: nothing is shown as running any more.
    assert!(!screen.lines().any(|l| l.contains("iteration") && l.contains("criteria")), "{screen}");
    // Colours on a terminal (NO_COLOR unset): the completed story event is green.
    let coloured = tmux.screen(true);
    assert!(coloured.contains("\u{1b}[32m"), "no colour on a terminal:\n{coloured:?}");
}

#[test]
fn watch_follows_no_color_and_plain_output_when_piped() {
    let daemon = Daemon::start();
    let p = slow_phase();
    if !have_tool("tmux", "tmux") {
        return;
    }
    let tmux = Tmux::shell("watch");
    tmux.send_keys(&[&ctl_line(&daemon, &p, "NO_COLOR=1", "watch 1"), "Enter"]);
    // The typed command runs (its first refresh draws the phase bar) before the phase starts.
    tmux.wait_screen("the phase bar", |s| s.contains("0/3 stories completed"));
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    tmux.wait_screen("a running story line", |s| s.lines().any(|l| l.contains("US-P1-00") && l.contains("criteria")));
    tmux.wait_screen("the end of the run", |s| s.contains("run completed") && s.contains("3/3 stories completed"));
    // NO_COLOR: no colour or bold codes at all (cursor movement is not colour).
    let screen = tmux.screen(true);
    assert!(!screen.contains("\u{1b}[3") && !screen.contains("\u{1b}[1m"), "colours despite NO_COLOR:\n{screen:?}");
    // Ctrl-C ends watch like any other tool and gives the shell back (130: ended by SIGINT;
    // the shell drops the rest of the typed line, so the code is asked for afterwards).
    tmux.send_keys(&["C-c"]);
    tmux.send_keys(&["echo \"[after\" \"ctrl-c=$?]\"", "Enter"]);
    tmux.wait_screen("watch ended by Ctrl-C", |s| s.contains("[after ctrl-c=130]"));

    // Not a terminal: the plain line-per-event output, no bars, no escape codes.
    // (`watch` never ends by itself, so the piped form is checked with `start --wait`.)
    let q = slow_phase();
    let out = daemon.ctl(&["-C", &q.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "escape codes in piped output:\n{text}");
    assert!(!text.contains("stories completed  "), "a progress bar in piped output:\n{text}");
    assert!(text.lines().skip(1).all(|l| l.contains(" #") && l.contains(" phase 1 ")), "{text}");
}

#[test]
fn completions_man_page_and_help_examples() {
    // None of these need a daemon, or a socket path.
    let ctl = |args: &[&str]| {
        let out = Command::new(bin("sticlerctl"))
            .args(args)
            .env_remove("STICLER_SOCKET")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "sticlerctl {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = ctl(&["completions", "bash"]);
    assert!(bash.contains("complete -F _sticlerctl") && bash.contains("retry"), "{bash}");
    let syntax = Command::new("bash").args(["-n", "-c", &bash]).output().unwrap();
    assert!(syntax.status.success(), "bash completion does not parse: {}", describe(&syntax));
    assert!(ctl(&["completions", "zsh"]).starts_with("#compdef sticlerctl"));
    assert!(ctl(&["completions", "fish"]).contains("complete -c sticlerctl"));

    let man = ctl(&["man"]);
    assert!(man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH sticlerctl 1"), "{man}");
    for command in ["start", "watch", "wait", "completions"] {
        assert!(man.contains(command), "man page lacks {command}");
    }

    let commands = [
        "ping",
        "version",
        "status",
        "validate",
        "start",
        "stop",
        "kill",
        "retry",
        "logs",
        "watch",
        "wait",
        "shutdown",
        "demo",
        "completions",
        "man",
    ];
    for command in commands {
        let help = ctl(&[command, "--help"]);
        assert!(help.contains("Example"), "`sticlerctl {command} --help` has no example:\n{help}");
    }
    // Usage errors say what to do next.
    let out = Command::new(bin("sticlerctl")).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"), "{}", describe(&out));
}
