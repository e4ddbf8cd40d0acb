//! `sticlerctl dashboard`: who may use its port (token, Host, Origin), where it listens, the
//! event stream resumed after a reconnect, the story detail, and the page itself in a real
//! headless Chromium (skipped, saying why, when chromium or chromedriver is not installed), and
//! in a real headless Firefox (over WebDriver BiDi, by `tests/browser/firefox_check.py`).

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{json, Value};
use sticler_tests::dashboard::{png_is_drawn, Browser, Dashboard};
use sticler_tests::{describe, poll, story, story_of, Daemon, ProjectBuilder};

/// A phase of three stories (the third waits for the first), not started.
fn small_phase() -> ProjectBuilder {
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[]), story("US-P1-003", &["US-P1-001"])]);
    p
}

#[test]
fn requests_without_the_token_get_401_and_other_hosts_are_refused() {
    let daemon = Daemon::start();
    let p = small_phase();
    let dash = Dashboard::start(&daemon, p.path());
    for path in ["/", "/app.js", "/api/status", "/api/events", "/api/story?story=US-P1-001"] {
        let (status, _, _) = dash.get(path, "");
        assert_eq!(status, 401, "{path} without a token");
        let (status, _, _) = dash.get(path, "Cookie: sticler_token_1=nope\r\n");
        assert_eq!(status, 401, "{path} with a wrong cookie");
    }
    let (status, _, _) = dash.get("/?token=0000", "");
    assert_eq!(status, 401, "a wrong token");

    // The first visit trades the token in the address for a cookie, and drops it from the address.
    let (status, headers, _) = dash.get(&format!("/?token={}", dash.token), "");
    assert_eq!(status, 303, "{headers}");
    let expected = format!("set-cookie: sticler_token_{}={}; HttpOnly; SameSite=Lax", dash.port, dash.token);
    assert!(headers.to_ascii_lowercase().contains(&expected.to_ascii_lowercase()), "{headers}");
    assert!(headers.contains("location: /\r\n"), "{headers}");
    let (status, headers, body) = dash.get("/", &dash.cookie());
    assert_eq!(status, 200, "{headers}");
    assert!(body.contains("<script src=\"/app.js\">"), "{body}");
    assert!(headers.contains("content-security-policy: default-src 'self'"), "{headers}");

    let (status, _, body) = dash.get("/api/status", &dash.cookie());
    assert_eq!(status, 200, "{body}");
    let status_json: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status_json["phases"][0]["stories"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(status_json["phases"][0]["layout"]["nodes"].as_array().map(Vec::len), Some(3), "{body}");

    // A page of another site that rebinds its name to 127.0.0.1 sends its own Host: refused,
    // token or not.
    for host in ["evil.example", &format!("evil.example:{}", dash.port), "127.0.0.1.evil.example", "[::1]"] {
        let head = format!("GET /api/status?token={} HTTP/1.1\r\nHost: {host}\r\n{}", dash.token, dash.cookie());
        let (status, _, _) = dash.request(&head, "");
        assert_eq!(status, 403, "Host {host}");
    }
}

#[test]
fn it_listens_on_127_0_0_1_only_and_ctrl_c_ends_it() {
    let daemon = Daemon::start();
    let p = small_phase();
    let dash = Dashboard::start(&daemon, p.path());
    // The dashboard's own sockets (its fds, by inode: another test's chromedriver may listen on
    // the same port number, on another socket). /proc/net/tcp{,6}: local address (hex IPv4 in
    // host byte order : hex port), state 0A = LISTEN, inode in the tenth column.
    let own: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", dash.pid()))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| Some(target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    let port = format!(":{:04X}", dash.port);
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "0A" && own.iter().any(|inode| inode == fields[9]) {
                listening.push(fields[1].to_string());
            }
        }
    }
    assert_eq!(listening, vec![format!("0100007F{port}")], "the dashboard's listening sockets");
    // An open event stream does not keep Ctrl-C from ending it.
    let mut stream = dash.events(None);
    stream.ready();
    assert_eq!(dash.interrupt().code(), Some(0));
}

#[test]
fn controls_need_the_token_and_this_origin() {
    let daemon = Daemon::start();
    let p = small_phase();
    let dash = Dashboard::start(&daemon, p.path());
    let body = json!({"phase": 1, "action": "start"}).to_string();
    let post = |extra: &str| {
        let head = format!(
            "POST /api/control HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n{extra}",
            dash.port
        );
        dash.request(&head, &body)
    };
    let origin = format!("Origin: http://127.0.0.1:{}\r\n", dash.port);
    assert_eq!(post(&origin).0, 401, "no token");
    assert_eq!(post(&dash.cookie()).0, 403, "no Origin");
    assert_eq!(post(&format!("{}Origin: http://evil.example\r\n", dash.cookie())).0, 403, "another origin");
    assert_eq!(post(&format!("{}Origin: null\r\n", dash.cookie())).0, 403, "an opaque origin");
    assert!(!daemon.phase_status(p.path(), 1).running, "a refused control started the phase");

    let (status, _, answer) = post(&format!("{}{origin}", dash.cookie()));
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("answer JSON");
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("phase 1 started")), "{answer}");
    let phase = daemon.wait_phase(p.path(), 1);
    assert_eq!(phase.counts.completed, 3, "{phase:?}");

    // The daemon's refusal comes back as its answer.
    let (status, _, answer) = post(&format!("{}{origin}", dash.cookie()));
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("completed"), "{answer}");
}

#[test]
fn the_event_stream_resumes_after_a_reconnect_with_no_gap() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let slow = json!({"sleep_ms": 150});
    let stories: Vec<_> =
        (1..=6).map(|i| story(&format!("US-P1-{i:03}"), &[]).script(slow.clone()).criteria(2)).collect();
    p.phase(1, "decomposed", &stories);
    let dash = Dashboard::start(&daemon, p.path());
    let mut stream = dash.events(None);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let mut seen = Vec::new();
    // A few events live, then the browser goes away mid-run.
    while seen.len() < 4 {
        seen.push(stream.next_event());
    }
    drop(stream);
    let phase = daemon.wait_phase(p.path(), 1);
    assert_eq!(phase.counts.completed, 6);
    let last = seen.last().map(|(seq, _)| *seq);
    let mut stream = dash.events(last);
    loop {
        let (seq, event) = stream.next_event();
        let ended = event["kind"] == "run_ended";
        seen.push((seq, event));
        if ended {
            break;
        }
    }
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>(), "a gap or a repeat");
    assert_eq!(seen[0].1["kind"], "run_started", "{:?}", seen[0]);
    for (seq, event) in &seen {
        assert_eq!(event["seq"].as_u64(), Some(*seq), "the SSE id is the event's number: {event}");
        assert_eq!(event["project"].as_str(), Some(phase.project.as_str()));
    }
    let completed = seen.iter().filter(|(_, e)| e["kind"] == "story_completed").count();
    assert_eq!(completed, 6, "{seen:?}");
}

#[test]
fn the_story_detail_has_its_spec_criteria_iterations_commit_and_logs() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2)]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let dash = Dashboard::start(&daemon, p.path());
    let (status, _, body) = dash.get("/api/story?story=US-P1-001", &dash.cookie());
    assert_eq!(status, 200, "{body}");
    let detail: sticler_proto::StoryDetail = serde_json::from_str(&body).expect("a story detail");
    assert!(detail.spec.starts_with("# US-P1-001: Story US-P1-001"), "{}", detail.spec);
    assert_eq!(detail.criteria.iter().filter(|c| c.done).count(), 2, "{:?}", detail.criteria);
    // The scripted worker completes after as many iterations as it has criteria.
    let verdicts: Vec<_> = detail.iterations.iter().map(|i| (i.iteration, i.exit, i.verdict.clone())).collect();
    assert_eq!(detail.iterations.len(), 2, "{verdicts:?}");
    assert!(detail.iterations.iter().all(|i| i.ended_ms.is_some_and(|end| end >= i.started_ms)), "{verdicts:?}");
    assert_eq!(detail.iterations[1].exit, Some(sticler_proto::ExitReason::Exited(0)));
    let hash = &detail.story.commit_hash;
    assert_eq!(hash, &story_of(&daemon.phase_status(p.path(), 1), "US-P1-001").commit_hash);
    let show = detail.commit_show.expect("the commit shown");
    assert!(show.starts_with(&format!("commit {hash}\n")), "{show}");
    assert!(
        show.contains("[US-P1-001]") && show.contains("+++ b/phases/phase_1/stories/US-P1-001/status.json"),
        "{show}"
    );

    // The log: each iteration after its mark, the latest by default, another one on demand.
    let (status, _, log) = dash.get("/api/log?story=US-P1-001", &dash.cookie());
    assert_eq!(status, 200, "{log}");
    assert!(log.starts_with("\u{1e}2\n") && log.contains("US-P1-001 iteration 2 ==="), "{log:?}");
    let (_, _, first) = dash.get("/api/log?story=US-P1-001&iteration=1", &dash.cookie());
    assert!(first.starts_with("\u{1e}1\n") && first.contains("US-P1-001 iteration 1 ==="), "{first:?}");

    let (status, _, body) = dash.get("/api/story?story=US-P1-009", &dash.cookie());
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no story US-P1-009"), "{body}");
}

/// The page in Chromium: every story in the graph, a node going from running to completed with
/// no reload, the story panel's commit and diff, retry from the panel, no console error, a
/// screenshot that is not blank.
#[test]
fn the_page_follows_a_run_live_in_a_real_browser() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(browser_test());
}

async fn browser_test() {
    let Some(browser) = Browser::start(1280, 800).await else { return };
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let stories = [
        story("US-P1-001", &[]).script(json!({"sleep_ms": 1500})),
        story("US-P1-002", &[]).script(json!({"mode": "self_fail"})),
        story("US-P1-003", &["US-P1-001"]).script(json!({"agent_output": "claude", "cost_usd": 0.25})),
        // Keeps the run going, so that a retried story runs in it at once.
        story("US-P1-004", &[]).script(json!({"mode": "hang"})),
        story("US-P1-005", &["US-P1-003", "US-P1-004"]),
    ];
    p.phase(1, "decomposed", &stories);
    let dash = Dashboard::start(&daemon, p.path());
    let page = &browser.client;
    page.goto("about:blank").await.expect("blank page");
    let blank = page.screenshot().await.expect("blank screenshot");
    page.goto(&dash.url).await.expect("open the dashboard");
    let count = "return document.querySelectorAll('#graph .node[data-id]').length === 5 || null";
    browser.wait_js(Duration::from_secs(20), "5 story nodes", count).await;
    let drawn: Value = page
        .execute("return [...document.querySelectorAll('#graph .node[data-id]')].map(n => n.dataset.id)", vec![])
        .await
        .expect("ids");
    assert_eq!(drawn, json!(["US-P1-001", "US-P1-002", "US-P1-003", "US-P1-004", "US-P1-005"]));
    let url: String = page.current_url().await.expect("url").to_string();
    assert!(!url.contains("token="), "the token stays in the address: {url}");

    // Started from the page's own button, through its confirmation.
    page.find(Locator::Css("button[data-action=start]")).await.expect("start button").click().await.expect("click");
    page.find(Locator::Id("confirm-ok")).await.expect("confirm").click().await.expect("click");
    let class_of = |id: &str, class: &str| {
        format!("const n = document.getElementById('n-{id}'); return (n && n.classList.contains('{class}')) || null")
    };
    browser.wait_js(Duration::from_secs(20), "US-P1-001 running", &class_of("US-P1-001", "st-running")).await;
    // The same page (no reload): a marker set now must survive.
    page.execute("window.notReloaded = true", vec![]).await.expect("mark");
    browser.wait_js(Duration::from_secs(30), "US-P1-001 completed", &class_of("US-P1-001", "st-completed")).await;
    browser.wait_js(Duration::from_secs(30), "US-P1-002 failed", &class_of("US-P1-002", "st-failed")).await;
    assert_eq!(page.execute("return window.notReloaded === true", vec![]).await.expect("marker"), json!(true));

    // The story panel: commit and diff of a completed story.
    page.execute(
        "document.getElementById('n-US-P1-001').dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open the story");
    let commit = browser
        .wait_js(
            Duration::from_secs(10),
            "the commit",
            "const c = document.getElementById('commit'); return c && c.textContent",
        )
        .await;
    let hash = story_of(&daemon.phase_status(p.path(), 1), "US-P1-001").commit_hash.clone();
    assert_eq!(commit, json!(hash));
    let diff = browser
        .wait_js(
            Duration::from_secs(10),
            "the diff",
            "const d = document.getElementById('diff'); return d && d.textContent",
        )
        .await;
    assert!(diff.as_str().is_some_and(|d| d.contains("+++ b/phases/phase_1/stories/US-P1-001/status.json")), "{diff}");

    // A Claude stream-json log is shown as turns, and the agent's cost on the node.
    browser.wait_js(Duration::from_secs(30), "US-P1-003 completed", &class_of("US-P1-003", "st-completed")).await;
    browser
        .wait_js(
            Duration::from_secs(10),
            "the cost on the node",
            "return document.querySelector('#n-US-P1-003 .meta').textContent.includes('$0.25') || null",
        )
        .await;
    page.execute(
        "document.getElementById('n-US-P1-003').dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open the story");
    let log = browser
        .wait_js(Duration::from_secs(10), "the result turn", "const l = document.getElementById('log').textContent; return l.includes('■ result (success) · $0.25: iteration done') && l")
        .await;
    assert!(!log.as_str().unwrap_or("").contains("{\"type\""), "raw stream-json shown: {log}");

    // Retry the failed story from its panel: it runs again (and now succeeds) in the same run.
    let rel = format!("{}/status.json", p.story_rel("US-P1-002"));
    let mut status: Value = serde_json::from_str(&p.read(&rel)).expect("status.json");
    status["script"] = json!({});
    p.write(&rel, &status.to_string());
    page.execute(
        "document.getElementById('n-US-P1-002').dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open the story");
    browser.wait_js(Duration::from_secs(10), "the retry button", "return document.getElementById('retry-story')").await;
    page.find(Locator::Id("retry-story")).await.expect("retry button").click().await.expect("click");
    page.find(Locator::Id("confirm-ok")).await.expect("confirm").click().await.expect("click");
    browser
        .wait_js(Duration::from_secs(30), "US-P1-002 completed after the retry", &class_of("US-P1-002", "st-completed"))
        .await;
    let answer = page.find(Locator::Id("answer")).await.expect("answer").text().await.expect("text");
    assert!(answer.contains("US-P1-002"), "the daemon's answer is shown: {answer:?}");
    let runs = story_of(&daemon.phase_status(p.path(), 1), "US-P1-002").runs;
    assert!(runs >= 2, "US-P1-002 ran {runs} times");

    // A hidden tab lets go of its event stream (a browser allows six connections to a host, for
    // all its tabs); shown again, it takes the stream up and shows what happened meanwhile.
    let shown = |visible: bool| {
        format!(
            "Object.defineProperty(document, 'hidden', {{value: {}, configurable: true}}); \
             document.dispatchEvent(new Event('visibilitychange')); return true",
            !visible
        )
    };
    page.execute(&shown(false), vec![]).await.expect("hide the page");
    let seen = page.execute("return window.sticler.lastSeq", vec![]).await.expect("last event").as_u64().unwrap_or(0);
    let released = page.execute("return window.sticler.source === null", vec![]).await.expect("source");
    assert_eq!(released, json!(true), "a hidden page keeps its event stream");
    let out = daemon.ctl(&["-C", &p.path_str(), "kill", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    poll(Duration::from_secs(20), "the run to end", || (!daemon.phase_status(p.path(), 1).running).then_some(()));
    page.execute(&shown(true), vec![]).await.expect("show the page");
    // The events it missed too: the stream starts again after the last one it saw.
    let caught_up = format!(
        "const n = document.getElementById('n-US-P1-004'); \
         return (!n.classList.contains('st-running') && window.sticler.lastSeq >= {}) || null",
        seen + 3
    );
    browser.wait_js(Duration::from_secs(20), "the run's end shown once the page is shown again", &caught_up).await;

    let png = page.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    assert!(
        png_is_drawn(&png, &blank),
        "a blank screenshot ({} bytes, blank {}): {}",
        png.len(),
        blank.len(),
        path.display()
    );
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.quit().await;
}

/// The same page in Firefox: the graph, the story panel's commit and diff, no console error, a
/// drawn screenshot. Firefox is driven over its own WebDriver BiDi by a small Python script, as
/// Debian has no geckodriver.
#[test]
fn the_page_works_in_a_real_firefox_too() {
    if !sticler_tests::have_tool("firefox-esr", "firefox-esr")
        || !sticler_tests::have_tool("/usr/bin/python3", "python3")
    {
        return;
    }
    let probe = std::process::Command::new("/usr/bin/python3").args(["-c", "import websockets"]).output();
    if !probe.is_ok_and(|out| out.status.success()) {
        println!("skipped: the Python websockets module is not installed (apt-get install python3-websockets)");
        return;
    }
    let daemon = Daemon::start();
    let p = small_phase();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert!(out.status.success(), "{}", describe(&out));
    let dash = Dashboard::start(&daemon, p.path());
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-firefox.png");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/firefox_check.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .args([script, &dash.url, "3"])
        .arg(&png)
        .output()
        .expect("run firefox_check.py");
    assert!(out.status.success(), "{}", describe(&out));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(seen["ids"], json!(["US-P1-001", "US-P1-002", "US-P1-003"]), "{seen}");
    let hash = story_of(&daemon.phase_status(p.path(), 1), "US-P1-001").commit_hash.clone();
    assert_eq!(seen["commit"], json!(hash), "{seen}");
    let diff = seen["diff"].as_str().unwrap_or("");
    assert!(diff.contains("+++ b/phases/phase_1/stories/US-P1-001/status.json"), "{seen}");
    assert_eq!(seen["console_errors"], json!([]), "{seen}");
    let shot = std::fs::read(&png).expect("the screenshot");
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n") && shot.len() > 20_000, "a blank screenshot: {}", png.display());
}
