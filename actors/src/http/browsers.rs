//! What keeps web pages from using the node's API through the browser of someone on its
//! machine or LAN (the hole Ollama shipped as a CVE):
//!
//! - **DNS rebinding.** A page at `evil.example` rebinds that name to 127.0.0.1 and calls the
//!   API as a same-origin page would. Every request must name the node in `Host`: an IP
//!   address, `localhost` (or a name under `.localhost`), this machine's host name (and
//!   `NAME.local`), or a name the user allowed (`--allow-host`). Anything else is 403.
//! - **Simple requests.** A page may POST to any address without a preflight if the body is
//!   `text/plain`, a form or multipart. A request that changes state (any method but GET,
//!   HEAD and OPTIONS) must be JSON or carry an `Authorization` header (either forces a
//!   preflight), and if it names an `Origin`, the node's own or an allowed one.
//! - **Preflights** (CORS) are answered for the allowed origins (`--allow-origin`) and
//!   refused for every other; responses to allowed origins say so
//!   (`Access-Control-Allow-Origin`).
//!
//! Clients that are not browsers (the CLI, OpenAI clients, curl) send a `Host` of the address
//! they dial and JSON, and pass untouched. Nothing here knows the token.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The browser rules of one API.
#[derive(Debug, Clone, Default)]
pub struct Browsers {
    /// Host names (lowercase, no port) besides IP addresses and loopback names.
    hosts: Vec<String>,
    /// Origins whose pages may call the API (lowercase, no trailing `/`).
    origins: Vec<String>,
}

impl Browsers {
    pub fn new(allowed_hosts: &[String], allowed_origins: &[String]) -> Browsers {
        let mut hosts: Vec<String> = allowed_hosts
            .iter()
            .map(|h| strip_port(&h.to_ascii_lowercase()).to_owned())
            .collect();
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() {
                hosts.push(format!("{name}.local"));
                hosts.push(name);
            }
        }
        Browsers {
            hosts,
            origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || host == "localhost"
            || host.ends_with(".localhost")
            || self.hosts.contains(&host)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.origins.iter().any(|o| *o == origin || o == "*")
    }

    /// Whether `origin` is the node's own (a page the node served: the dashboard).
    fn own_origin(origin: &str, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let origin = origin.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        origin == format!("http://{host}") || origin == format!("https://{host}")
    }

    /// Check a request before anything else sees it: `Err` is the refusal (or a preflight's
    /// answer) to send; `Ok` carries the origin to name in the response, if any.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, Box<Response>> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(h) = host
            && !self.host_allowed(h)
        {
            return Err(Box::new(refuse(
                "host_not_allowed",
                format!("this node does not answer to the name `{h}`"),
                "call it by its address, localhost or its host name; to use another name (a proxy, a LAN name), start the node with --allow-host NAME (allowed_hosts in config.toml)",
            )));
        }
        let origin = headers.get(header::ORIGIN);
        let origin_str = origin.and_then(|v| v.to_str().ok());
        let foreign = origin_str.filter(|o| !Self::own_origin(o, host) && *o != "null");
        let allowed_origin = foreign.is_some_and(|o| self.origin_allowed(o));
        if *method == Method::OPTIONS && origin.is_some() {
            return Err(Box::new(match foreign {
                Some(_) if allowed_origin => preflight(origin.cloned()),
                Some(o) => refuse(
                    "origin_not_allowed",
                    format!("pages of {o} may not call this node"),
                    "to let a web app call the node from a browser, start the node with --allow-origin ORIGIN (allowed_origins in config.toml)",
                ),
                None => preflight(origin.cloned()),
            }));
        }
        let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changes {
            if let Some(o) = foreign
                && !allowed_origin
            {
                return Err(Box::new(refuse(
                    "origin_not_allowed",
                    format!("pages of {o} may not call this node"),
                    "to let a web app call the node from a browser, start the node with --allow-origin ORIGIN (allowed_origins in config.toml)",
                )));
            }
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| {
                    let t = t
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase();
                    t == "application/json" || t.ends_with("+json")
                });
            let body = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|n| n.trim() != "0")
                || headers.contains_key(header::TRANSFER_ENCODING);
            let has_type = headers.contains_key(header::CONTENT_TYPE);
            // A request with no body and no type (a bare POST to cancel a job) is not one a
            // form can send without saying its type.
            // The dashboard's login form is a form (it changes nothing without the token,
            // and its origin was checked above).
            let form_route = matches!(path, "/login" | "/logout");
            if !json
                && !form_route
                && (has_type || body)
                && !headers.contains_key(header::AUTHORIZATION)
            {
                return Err(Box::new((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    axum::Json(serde_json::json!({
                        "error": {
                            "code": "json_required",
                            "message": "this route takes JSON (`Content-Type: application/json`)",
                            "hint": "send the body as JSON with that content type, or send the API token (`Authorization: Bearer TOKEN`)",
                        }
                    })),
                )
                    .into_response()));
            }
        }
        Ok(allowed_origin.then(|| origin.cloned()).flatten())
    }
}

/// Add the CORS headers for an allowed `origin` to a response.
pub fn allow(response: &mut Response, origin: HeaderValue) {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn preflight(origin: Option<HeaderValue>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

fn refuse(code: &str, message: String, hint: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": { "code": code, "message": message, "hint": hint }
        })),
    )
        .into_response()
}

/// `host:port` → `host` (an IPv6 literal keeps its brackets).
fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hosts_origins_and_types() {
        let b = Browsers {
            hosts: vec!["box.lan".into()],
            origins: vec!["https://app.example".into()],
        };
        for ok in [
            "127.0.0.1:7700",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "box.lan",
            "10.0.0.2",
            "a.localhost",
        ] {
            assert!(
                b.check(&Method::GET, "/", &headers(&[("host", ok)]))
                    .is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:7700",
            "localhost.evil.example",
            "box.lan.evil",
        ] {
            let r = b
                .check(&Method::GET, "/", &headers(&[("host", bad)]))
                .unwrap_err();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad}");
        }
        let post =
            |pairs: &[(&'static str, &str)]| b.check(&Method::POST, "/api/jobs", &headers(pairs));
        assert_eq!(
            post(&[("host", "localhost"), ("content-type", "text/plain")])
                .unwrap_err()
                .status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(
            post(&[
                ("host", "localhost"),
                ("content-type", "application/json; charset=utf-8")
            ])
            .is_ok()
        );
        assert!(
            post(&[
                ("host", "localhost"),
                ("content-type", "text/plain"),
                ("authorization", "Bearer x")
            ])
            .is_ok()
        );
        assert!(
            post(&[("host", "localhost"), ("content-length", "0")]).is_ok(),
            "a bare POST"
        );
        // Origins: the node's own and allowed ones; others refused.
        assert!(
            post(&[
                ("host", "localhost:7"),
                ("origin", "http://localhost:7"),
                ("content-type", "application/json")
            ])
            .is_ok()
        );
        assert_eq!(
            post(&[
                ("host", "localhost"),
                ("origin", "https://evil.example"),
                ("content-type", "application/json")
            ])
            .unwrap_err()
            .status(),
            StatusCode::FORBIDDEN
        );
        let allowed = post(&[
            ("host", "localhost"),
            ("origin", "https://app.example"),
            ("content-type", "application/json"),
        ])
        .unwrap();
        assert!(allowed.is_some());
        let pre = b
            .check(
                &Method::OPTIONS,
                "/v1/models",
                &headers(&[("host", "localhost"), ("origin", "https://app.example")]),
            )
            .unwrap_err();
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            pre.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        let pre = b
            .check(
                &Method::OPTIONS,
                "/v1/models",
                &headers(&[("host", "localhost"), ("origin", "https://evil.example")]),
            )
            .unwrap_err();
        assert_eq!(pre.status(), StatusCode::FORBIDDEN);
    }
}
