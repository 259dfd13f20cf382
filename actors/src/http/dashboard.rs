//! The dashboard: a page at `/` (swarm, queue, a job, collections, chat, plan) whose files
//! are compiled into the binary (`dashboard/`: plain HTML, CSS and JavaScript; no build
//! step, nothing loaded from elsewhere: the Content-Security-Policy allows this node only),
//! and its login (`/login`: the API token into an `HttpOnly`, `SameSite=Strict` cookie).
//!
//! The page and its assets hold no data and pass the gate without the token
//! ([`is_public`](crate::http::auth::is_public)); everything they show comes from the gated
//! API, live through `/api/events` and `/api/jobs/{id}/stream`. No job logic lives here.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Form;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;

use crate::http::auth::{COOKIE, Gate};
use crate::node::handle::NodeHandle;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const LOGIN: &str = include_str!("dashboard/login.html");
const ICON: &str = include_str!("dashboard/icon.svg");

/// Only this node: no CDN, no inline script, no framing by other sites.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How long the login cookie lasts.
const COOKIE_DAYS: u32 = 30;

fn page(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let body: Body = body.into();
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary: a browser asks again rather than keep an old one.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The page shell; the assets carry the version, so an upgraded node's page loads its own.
async fn index() -> Response {
    let body = INDEX.replace("{{version}}", env!("CARGO_PKG_VERSION"));
    page(StatusCode::OK, "text/html; charset=utf-8", body)
}

async fn app_js() -> Response {
    page(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    page(StatusCode::OK, "text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    page(StatusCode::OK, "image/svg+xml", ICON)
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let body = LOGIN
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{message}}", &html_escape(message));
    page(status, "text/html; charset=utf-8", body)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn login_form(Extension(gate): Extension<Arc<Gate>>) -> Response {
    let message = if gate.open_without_token() {
        "This node's API listens on this machine only: the dashboard works without the token. Log in to act as the node's owner."
    } else {
        "This node's API needs its token. On the node, `myco token` prints it."
    };
    login_page(StatusCode::OK, message)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// Check the token, and keep it in the login cookie.
async fn login(Extension(gate): Extension<Arc<Gate>>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    // A token travels as a cookie value: only what a cookie may hold.
    let plain = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    if token.is_empty() || !plain || !gate.accepts(token) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not this node's API token. On the node, `myco token` prints it.",
        );
    }
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        COOKIE_DAYS * 86_400
    );
    redirect_with_cookie(&cookie)
}

/// Forget the login cookie.
async fn logout() -> Response {
    redirect_with_cookie(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

fn redirect_with_cookie(cookie: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

/// The dashboard's routes.
pub fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/icon.svg", get(icon))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::is_public;

    #[test]
    fn only_the_shell_and_its_assets_are_public() {
        for p in ["/", "/login", "/logout", "/assets/app.js"] {
            assert!(is_public(p), "{p}");
        }
        for p in [
            "/api/jobs",
            "/api/events",
            "/v1/models",
            "/metrics",
            "/health",
            "/x",
        ] {
            assert!(!is_public(p), "{p}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", APP_JS),
            ("login.html", LOGIN),
        ] {
            // SVG's namespace is a name, not a request.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for outside in ["http://", "https://", "src=\"//", "href=\"//", "<script>"] {
                assert!(!text.contains(outside), "{name} contains {outside}");
            }
        }
    }
}
