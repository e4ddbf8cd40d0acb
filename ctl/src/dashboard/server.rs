//! The HTTP side: accepts connections on 127.0.0.1, runs every request through the `auth`
//! gate, then hands it to `routes`. HTTP/1.1 with hyper; one task per connection on a
//! single-threaded runtime (the dashboard waits on the daemon, it does not compute).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::auth::{Gate, Verdict};
use super::routes;

pub type Body = BoxBody<Bytes, Infallible>;

/// What every request handler shares.
pub struct App {
    pub socket: PathBuf,
    /// The project of `-C`, shown first.
    pub project: String,
    pub gate: Gate,
}

/// Serves until Ctrl-C (SIGINT) or SIGTERM.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accepted = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: say so, and give the system a moment
                // instead of failing the same accept in a tight loop.
                eprintln!("sticlerctl dashboard: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&app), request));
            // A browser closing its tab mid-stream ends the connection with an error: nothing to report.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(app: Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let changes_state = request.method() != Method::GET && request.method() != Method::HEAD;
    let verdict = app.gate.check(request.headers(), request.uri().query(), changes_state);
    let response = match verdict {
        Verdict::ForeignHost => {
            text(StatusCode::FORBIDDEN, "refused: the Host header must be 127.0.0.1 or localhost (DNS rebinding)")
        }
        Verdict::NoToken => text(
            StatusCode::UNAUTHORIZED,
            "401: open the address sticlerctl dashboard printed (it carries the token: /?token=...)",
        ),
        Verdict::CrossOrigin => {
            text(StatusCode::FORBIDDEN, "refused: requests that change state must come from this page")
        }
        // The token moves from the address into a cookie, and the address loses it: it is not
        // left in the history or in a screenshot. Lax, not Strict: the first visit often comes
        // from elsewhere (the redirect file `open_browser` writes, a link in a terminal), and
        // Strict would keep the cookie off the redirected request; controls check the Origin.
        Verdict::AllowedByQuery if request.uri().path() == "/" && request.method() == Method::GET => {
            let cookie =
                format!("{}={}; HttpOnly; SameSite=Lax; Path=/", app.gate.cookie_name(), app.gate.token.as_str());
            let mut response = text(StatusCode::SEE_OTHER, "");
            let headers = response.headers_mut();
            headers.insert(LOCATION, HeaderValue::from_static("/"));
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.insert(SET_COOKIE, value);
            }
            response
        }
        Verdict::Allowed | Verdict::AllowedByQuery => routes::route(&app, request).await,
    };
    Ok(response)
}

/// A complete response of `content_type`; never cached (a page shows live state).
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", body)
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => full(status, "application/json", bytes),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the answer as JSON"),
    }
}
