//! Which handler answers which path. The page and its assets are compiled in; `/api/...`
//! answers with JSON (`api`) or a stream (`stream`).

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use super::server::{full, text, App, Body};
use super::{api, stream};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const GRAPH_JS: &str = include_str!("assets/graph.js");
const STORY_JS: &str = include_str!("assets/story.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Only the page's own files run: no inline script, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn route(app: &App, request: Request<Incoming>) -> Response<Body> {
    let query = request.uri().query().unwrap_or("").to_string();
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/") => {
            let mut response = full(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML);
            let headers = response.headers_mut();
            headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
            headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
            response
        }
        (&Method::GET, "/app.js") => full(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        (&Method::GET, "/graph.js") => full(StatusCode::OK, "text/javascript; charset=utf-8", GRAPH_JS),
        (&Method::GET, "/story.js") => full(StatusCode::OK, "text/javascript; charset=utf-8", STORY_JS),
        (&Method::GET, "/app.css") => full(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
        (&Method::GET, "/api/projects") => api::projects(app).await,
        (&Method::GET, "/api/status") => api::status(app, &query).await,
        (&Method::GET, "/api/story") => api::story(app, &query).await,
        (&Method::GET, "/api/log") => stream::log(app, &query).await,
        (&Method::GET, "/api/events") => {
            let last =
                request.headers().get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            stream::events(app, &query, last).await
        }
        (&Method::POST, "/api/control") => api::control(app, request.into_body()).await,
        (&Method::GET, _) => text(StatusCode::NOT_FOUND, "no such page"),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}
