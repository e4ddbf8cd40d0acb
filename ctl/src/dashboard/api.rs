//! The JSON answers of the dashboard: the projects the daemon knows, a project's phases with
//! each one's graph laid out, one story in full, and the controls (start, stop, kill, retry,
//! resume), each one request to sticlerd.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sticler_proto::{ErrorKind, PhaseRef, PhaseView, Request, Response as Reply, StoryId};

use super::auth::query_param;
use super::daemon_link::call;
use super::layout::{layout, Layout};
use super::server::{json, App, Body};
use crate::client::ClientError;

/// The largest control request read (a retry of every story of a big phase fits).
const MAX_CONTROL_BODY: usize = 256 * 1024;

/// A daemon error as the page shows it: refusals are the daemon's answer (404 for what it does
/// not know, else 409), the rest mean the daemon could not be asked (502).
pub fn failed(e: ClientError) -> Response<Body> {
    let status = match &e {
        ClientError::Refused(reply) if reply.kind == ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ClientError::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    json(status, &json!({"ok": false, "message": e.to_string()}))
}

fn bad_request(message: String) -> Response<Body> {
    json(StatusCode::BAD_REQUEST, &json!({"ok": false, "message": message}))
}

fn project_of(app: &App, query: &str) -> String {
    query_param(query, "project").filter(|p| !p.is_empty()).unwrap_or_else(|| app.project.clone())
}

/// The projects for the switcher: this dashboard's own first, then every other one the daemon runs or ran.
pub async fn projects(app: &App) -> Response<Body> {
    let request = Request::Status { project: String::new(), phase: None, story: None };
    let mut list = vec![app.project.clone()];
    match call(&app.socket, request).await {
        Ok(Reply::StatusAll(reports)) => {
            list.extend(reports.into_iter().map(|r| r.project).filter(|p| *p != app.project));
        }
        Ok(other) => return failed(ClientError::Protocol(format!("expected StatusAll, got {other:?}"))),
        Err(e) => return failed(e),
    }
    json(StatusCode::OK, &list)
}

#[derive(Serialize)]
struct PhaseWithLayout {
    #[serde(flatten)]
    view: PhaseView,
    layout: Layout,
}

/// Every phase of a project, each with its graph laid out.
pub async fn status(app: &App, query: &str) -> Response<Body> {
    let project = project_of(app, query);
    let report = match call(&app.socket, Request::Status { project, phase: None, story: None }).await {
        Ok(Reply::Status(report)) => report,
        Ok(other) => return failed(ClientError::Protocol(format!("expected Status, got {other:?}"))),
        Err(e) => return failed(e),
    };
    let phases: Vec<PhaseWithLayout> = report
        .phases
        .into_iter()
        .map(|view| {
            let stories: Vec<(&str, &[String])> =
                view.stories.iter().map(|s| (s.id.as_str(), s.dependencies.as_slice())).collect();
            let layout = layout(&stories);
            PhaseWithLayout { view, layout }
        })
        .collect();
    json(StatusCode::OK, &json!({"project": report.project, "phases": phases}))
}

/// One story in full (`?story=US-P1-003`, its phase taken from the id).
pub async fn story(app: &App, query: &str) -> Response<Body> {
    let Some(story) = query_param(query, "story") else { return bad_request("no story given".into()) };
    let Some(id) = StoryId::parse(&story) else { return bad_request(format!("{story:?} is not a story id")) };
    let phase = PhaseRef { project: project_of(app, query), phase: id.phase };
    match call(&app.socket, Request::StoryDetail { phase, story }).await {
        Ok(Reply::StoryDetail(detail)) => json(StatusCode::OK, &detail),
        Ok(other) => failed(ClientError::Protocol(format!("expected StoryDetail, got {other:?}"))),
        Err(e) => failed(e),
    }
}

/// A control from the page's buttons.
#[derive(Deserialize)]
struct Control {
    #[serde(default)]
    project: String,
    phase: u32,
    action: Action,
    #[serde(default)]
    stories: Vec<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Action {
    Start,
    Stop,
    Kill,
    Retry,
    RetryFailed,
    Resume,
}

/// Runs one control; answers `{"ok": true, "message": <the daemon's answer>}`.
pub async fn control(app: &App, body: Incoming) -> Response<Body> {
    let bytes = match Limited::new(body, MAX_CONTROL_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return bad_request(format!("cannot read the request: {e}")),
    };
    let control: Control = match serde_json::from_slice(&bytes) {
        Ok(control) => control,
        Err(e) => return bad_request(format!("not a control: {e}")),
    };
    let project = if control.project.is_empty() { app.project.clone() } else { control.project };
    let phase = PhaseRef { project, phase: control.phase };
    let number = phase.phase;
    let request = match control.action {
        Action::Start => Request::Start { phase, force: false },
        Action::Stop => Request::Stop { phase, grace_secs: None },
        Action::Kill => Request::Kill(phase),
        Action::Retry if control.stories.is_empty() => return bad_request("retry names no story".into()),
        Action::Retry => Request::Retry { phase, stories: control.stories, all_failed: false },
        Action::RetryFailed => Request::Retry { phase, stories: Vec::new(), all_failed: true },
        Action::Resume => Request::Resume(phase),
    };
    let message = match call(&app.socket, request).await {
        Ok(Reply::Done { message }) => message,
        Ok(Reply::Started(view)) => format!("phase {number} started ({} stories)", view.counts.total),
        Ok(other) => return failed(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        Err(e) => return failed(e),
    };
    json(StatusCode::OK, &json!({"ok": true, "message": message}))
}
