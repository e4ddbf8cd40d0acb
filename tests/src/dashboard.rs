//! The dashboard under test: `sticlerctl dashboard` as a child process, plain HTTP/1.1 requests
//! to it (written by hand, so that every header is the test's choice), and a headless Chromium
//! driven through chromedriver (WebDriver) for the page itself. Used by `tests/dashboard.rs`
//! and by the bench.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use serde_json::{json, Value};

use crate::{bin, poll, Daemon};

/// A running `sticlerctl dashboard`, killed on drop.
pub struct Dashboard {
    child: Child,
    pub port: u16,
    pub token: String,
    /// The address it printed, with the token.
    pub url: String,
}

impl Dashboard {
    /// `sticlerctl --json dashboard --no-open` for `project`; returns once it printed its address.
    pub fn start(daemon: &Daemon, project: &Path) -> Dashboard {
        let mut child = Command::new(bin("sticlerctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("-C")
            .arg(project)
            .args(["--json", "dashboard", "--no-open"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sticlerctl dashboard");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("dashboard stdout");
        BufReader::new(stdout).read_line(&mut line).expect("dashboard address");
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Dashboard {
            child,
            port: info["port"].as_u64().expect("port") as u16,
            token: info["token"].as_str().expect("token").to_string(),
            url: info["url"].as_str().expect("url").to_string(),
        }
    }

    /// The dashboard's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (Ctrl-C) and returns how the process ended.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal the dashboard");
        poll(Duration::from_secs(20), "the dashboard to exit", || self.child.try_wait().ok().flatten())
    }

    /// Sends `head` (request line and header lines, each ending in CRLF, without the blank line) and `body`;
    /// returns the status code, the header block and the body.
    pub fn request(&self, head: &str, body: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the dashboard");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        write!(stream, "{head}{length}Connection: close\r\n\r\n{body}").expect("send request");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read response");
        let (headers, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = headers.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, headers.to_string(), dechunk(headers, body))
    }

    /// `GET path` with the Host header of this dashboard and `extra` header lines.
    pub fn get(&self, path: &str, extra: &str) -> (u16, String, String) {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{extra}", self.port), "")
    }

    /// The cookie header line that carries the token.
    pub fn cookie(&self) -> String {
        format!("Cookie: sticler_token_{}={}\r\n", self.port, self.token)
    }

    /// Opens `/api/events` (with `Last-Event-ID: last` when given) and returns the stream's reader.
    pub fn events(&self, last: Option<u64>) -> EventStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the dashboard");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let resume = last.map(|seq| format!("Last-Event-ID: {seq}\r\n")).unwrap_or_default();
        let mut writer = stream.try_clone().expect("clone stream");
        write!(writer, "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}{resume}\r\n", self.port, self.cookie())
            .expect("send request");
        EventStream { reader: BufReader::new(stream) }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chunked body put back together (the dashboard streams what it does not know the length of).
fn dechunk(headers: &str, body: &str) -> String {
    if !headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A Server-Sent Events response being read: the events' `id` and `data` lines.
pub struct EventStream {
    reader: BufReader<TcpStream>,
}

impl EventStream {
    /// Reads up to the `ready` message: the daemon's watch is set up.
    pub fn ready(&mut self) {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read the event stream");
            assert!(n > 0, "the event stream ended before it was ready");
            if line.trim_end() == "event: ready" {
                return;
            }
        }
    }

    /// The next event with an id: (id, data as JSON). Chunk-size lines and comments are skipped.
    pub fn next_event(&mut self) -> (u64, Value) {
        let mut id = None;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read the event stream");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end();
            if let Some(value) = line.strip_prefix("id: ") {
                id = value.parse().ok();
            } else if let (Some(data), Some(seq)) = (line.strip_prefix("data: "), id) {
                return (seq, serde_json::from_str(data).expect("event JSON"));
            }
        }
    }
}

/// chromedriver and a headless Chromium session through it; both end on drop.
pub struct Browser {
    driver: Child,
    pub client: fantoccini::Client,
}

/// Chromium's console, read through chromedriver's log endpoint (not part of W3C WebDriver).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

impl Browser {
    /// A headless Chromium at `width`×`height`, or `None` (with the reason printed) when chromium
    /// or chromedriver is not installed.
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        if !crate::have_tool("chromium", "chromium") || !crate::have_tool("chromedriver", "chromium-driver") {
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        poll(Duration::from_secs(20), "chromedriver to listen", || TcpStream::connect(("127.0.0.1", port)).ok());
        let mut caps = Capabilities::new();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--window-size={width},{height}"),
        ]
        .map(String::from);
        caps.insert("goog:chromeOptions".into(), json!({"args": args}));
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        Some(Browser { driver, client })
    }

    /// The console messages of level SEVERE (errors) logged since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self.client.issue_cmd(BrowserLog).await.expect("the browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Waits (up to `timeout`) until `script` (a function body returning a value) returns
    /// something other than null or false; returns it.
    pub async fn wait_js(&self, timeout: Duration, what: &str, script: &str) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let value = self.client.execute(script, vec![]).await.expect("run a script in the page");
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Browser {
    /// Ends the session (chromium exits with it), then chromedriver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A TCP port free at the time of asking.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Whether a screenshot shows a drawn page rather than a blank one, against `blank` (a
/// screenshot of an empty page of the same size): PNG compresses one colour to almost nothing,
/// so a page with a graph, text and colours is several times larger.
pub fn png_is_drawn(png: &[u8], blank: &[u8]) -> bool {
    png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 4 * blank.len()
}
