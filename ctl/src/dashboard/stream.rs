//! The two streams of the page: the daemon's events as Server-Sent Events (`id:` is the event's
//! sequence number, so a browser that reconnects sends `Last-Event-ID` and the daemon replays
//! what it missed) and a story's log, followed as it grows. Each ends as soon as its tab goes.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use sticler_proto::{PhaseRef, Request, Response as Reply, ServerMessage, StoryId};
use tokio::sync::mpsc;

use super::api::failed;
use super::auth::query_param;
use super::daemon_link::DaemonLink;
use super::server::{json, App, Body};

/// A comment line this often keeps proxies from closing a quiet stream and finds closed tabs.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// What the browser waits before reconnecting a broken event stream.
const RECONNECT_MS: u32 = 1000;
/// Marks where one iteration's log begins in a log stream (then the number and a newline).
const ITERATION_MARK: char = '\u{1e}';

/// A response body fed by a channel; the sender sees the tab go away (`Sender::closed`).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn streaming(content_type: &'static str, rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut response = Response::new(ChannelBody(rx).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/api/events?project=P[&since=N]`: the project's events, from after `Last-Event-ID` (or
/// `since`) when given. The first message is `event: ready` with the last sequence number the
/// daemon had stored, so the page knows when the replay is over.
pub async fn events(app: &App, query: &str, last_event_id: Option<u64>) -> Response<Body> {
    let project = query_param(query, "project").filter(|p| !p.is_empty()).unwrap_or_else(|| app.project.clone());
    let since = last_event_id.or_else(|| query_param(query, "since").and_then(|s| s.parse().ok()));
    let mut link = match DaemonLink::connect(&app.socket).await {
        Ok(link) => link,
        Err(e) => return failed(e),
    };
    if let Err(e) = link.send(Request::Watch { project: Some(project), phase: None, since }).await {
        return failed(e);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let beat = tx.clone();
    tokio::spawn(async move {
        let forward = async {
            if tx.send(Bytes::from(format!("retry: {RECONNECT_MS}\n\n"))).await.is_err() {
                return;
            }
            while let Ok(message) = link.next().await {
                let Some(frame) = sse_frame(&message) else { continue };
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
            // The daemon went away: ending the response makes the browser reconnect (with
            // Last-Event-ID), which resumes once the daemon is back.
        };
        let heartbeat = async {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
            loop {
                ticks.tick().await;
                if beat.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = forward => {}
            _ = heartbeat => {}
        }
    });
    streaming("text/event-stream", rx)
}

/// One daemon message as an SSE frame: events with their sequence number as `id`.
fn sse_frame(message: &ServerMessage) -> Option<String> {
    match message {
        ServerMessage::Event(event) => {
            let data = serde_json::to_string(event).ok()?;
            Some(format!("id: {}\ndata: {data}\n\n", event.seq))
        }
        ServerMessage::Response(Reply::WatchStarted { last_seq }) => {
            Some(format!("event: ready\ndata: {}\n\n", json!({"last_seq": last_seq})))
        }
        _ => None,
    }
}

/// `/api/log?story=ID[&iteration=K][&follow=1][&project=P]`: the story's log as text, each
/// iteration's part after a line `\x1e<K>`; with `follow`, the stream stays open and grows
/// until the run ends, moving on to later iterations.
pub async fn log(app: &App, query: &str) -> Response<Body> {
    let Some(story) = query_param(query, "story") else {
        return json(StatusCode::BAD_REQUEST, &json!({"ok": false, "message": "no story given"}));
    };
    let Some(id) = StoryId::parse(&story) else {
        return json(StatusCode::BAD_REQUEST, &json!({"ok": false, "message": format!("{story:?} is not a story id")}));
    };
    let project = query_param(query, "project").filter(|p| !p.is_empty()).unwrap_or_else(|| app.project.clone());
    let request = Request::Logs {
        phase: PhaseRef { project, phase: id.phase },
        story,
        iteration: query_param(query, "iteration").and_then(|k| k.parse().ok()),
        follow: query_param(query, "follow").as_deref() == Some("1"),
        all: false,
        tail: None,
    };
    let mut link = match DaemonLink::connect(&app.socket).await {
        Ok(link) => link,
        Err(e) => return failed(e),
    };
    if let Err(e) = link.send(request).await {
        return failed(e);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let forward = async {
            let mut shown = None;
            loop {
                let chunk = match link.next().await {
                    Ok(ServerMessage::Response(Reply::LogChunk { iteration, data })) => {
                        let mut chunk = Vec::with_capacity(data.len() + 16);
                        if shown != Some(iteration) {
                            shown = Some(iteration);
                            chunk.extend_from_slice(format!("{ITERATION_MARK}{iteration}\n").as_bytes());
                        }
                        chunk.extend_from_slice(&data);
                        chunk
                    }
                    Ok(ServerMessage::Event(_)) => continue,
                    Ok(_) => return,
                    // A story with no log yet, or a daemon that went away: the page says so.
                    Err(e) => {
                        let _ = tx.send(Bytes::from(format!("{ITERATION_MARK}0\n{e}\n"))).await;
                        return;
                    }
                };
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = forward => {}
            _ = tx.closed() => {}
        }
    });
    streaming("text/plain; charset=utf-8", rx)
}
