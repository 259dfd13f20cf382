//! The gate in front of every route: the API token, who the caller is ([`Caller`]: the
//! node's owner, or a client whose jobs read only below the data roots), and a per-client
//! request rate limit on `/v1/*`. The rule is [`myco_runtime::access`]'s.
//!
//! | the API listens on | no token | the token | a wrong token |
//! | --- | --- | --- | --- |
//! | loopback only | a client | from loopback: the owner | a client (OpenAI clients need some key: any will do) |
//! | anything else | 401 (`/metrics` too, unless public) | the owner from loopback, else a client | 401 |
//!
//! The token comes as `Authorization: Bearer TOKEN`, or from the dashboard's login cookie
//! ([`COOKIE`]: `HttpOnly`, `SameSite=Strict`, so no other site's page can send it). The
//! dashboard's pages and assets ([`is_public`]) hold no data and pass
//! without it: what they show comes from the gated API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use myco_runtime::access::{Access, ApiToken};

use super::browsers::{self, Browsers};
use super::listen::Peer;

/// What the gate knows: the token, where the API listens, the data roots, the rate limit.
#[derive(Debug)]
pub struct Gate {
    token: ApiToken,
    /// Every address the API listens on is loopback: a caller without the token may come in.
    loopback_only: bool,
    public_metrics: bool,
    /// What a caller who is not the owner may read.
    roots: Access,
    rate: Option<RateLimit>,
    /// What web pages may do through a browser.
    browsers: Browsers,
}

impl Gate {
    pub fn new(
        token: ApiToken,
        loopback_only: bool,
        public_metrics: bool,
        roots: Access,
        rate_per_s: u32,
    ) -> Gate {
        Gate {
            token,
            loopback_only,
            public_metrics,
            roots,
            rate: (rate_per_s > 0).then(|| RateLimit::new(rate_per_s)),
            browsers: Browsers::default(),
        }
    }

    /// The rules for requests from web pages (allowed host names and origins).
    #[must_use]
    pub fn with_browsers(mut self, browsers: Browsers) -> Gate {
        self.browsers = browsers;
        self
    }
}

/// Who is calling, for the handlers (an extension on every request that passed the gate).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The node's owner: the token, from this machine.
    pub owner: bool,
    /// What the caller's jobs may read.
    pub access: Access,
}

/// The paths that pass the gate without the token: the dashboard's page shell, its assets
/// and the login itself (they hold no data).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/login" | "/logout") || path.starts_with("/assets/")
}

/// The dashboard's login cookie: it holds the API token.
pub const COOKIE: &str = "myco_token";

/// The token in a `Cookie` header, if the login cookie is there.
fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then(|| v.trim().to_owned())
        })
}

impl Gate {
    /// Whether `token` is this node's API token (the login page checks it).
    pub fn accepts(&self, token: &str) -> bool {
        self.token.matches(token)
    }

    /// Whether a caller without the token may come in (the API listens on loopback only).
    pub fn open_without_token(&self) -> bool {
        self.loopback_only
    }
}

/// The middleware.
pub async fn gate(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let origin = match gate
        .browsers
        .check(req.method(), req.uri().path(), req.headers())
    {
        Ok(origin) => origin,
        Err(refused) => return *refused,
    };
    let mut response = admit(&gate, req, next).await;
    if let Some(origin) = origin {
        browsers::allow(&mut response, origin);
    }
    response
}

/// The token, the caller and the rate limit.
async fn admit(gate: &Gate, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(a))| *a);
    let loopback = peer.is_some_and(|a| a.ip().is_loopback());
    let openai = req.uri().path().starts_with("/v1/");
    let metrics = req.uri().path() == "/metrics";
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_owned())
        .or_else(|| cookie_token(req.headers()));
    let authenticated = match presented.as_deref() {
        Some(t) if gate.token.matches(t) => true,
        Some(_) if gate.loopback_only => false,
        Some(_) => {
            return unauthorized(
                openai,
                "the API token is wrong",
                "send the token of this node: `myco token` on the node prints it (it is in ~/.myco/api.token there)",
            );
        }
        None => {
            let public = gate.public_metrics && metrics;
            if !gate.loopback_only && !public {
                return unauthorized(
                    openai,
                    "this API needs a token (it listens beyond this machine)",
                    "send `Authorization: Bearer TOKEN` (an OpenAI client's api_key); `myco token` on the node prints it",
                );
            }
            false
        }
    };
    let owner = authenticated && loopback;
    if openai
        && !owner
        && let (Some(rate), Some(peer)) = (&gate.rate, peer)
        && let Err(wait_s) = rate.take(peer.ip())
    {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "error": {
                    "message": format!("too many requests from {}: slow down, retry in {wait_s} s", peer.ip()),
                    "type": "rate_limit_error",
                    "param": null,
                    "code": "rate_limit_exceeded",
                }
            })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
        return r;
    }
    req.extensions_mut().insert(Caller {
        owner,
        access: if owner {
            Access::Any
        } else {
            gate.roots.clone()
        },
    });
    next.run(req).await
}

fn unauthorized(openai: bool, message: &str, hint: &str) -> Response {
    let body = if openai {
        serde_json::json!({
            "error": {
                "message": format!("{message}; {hint}"),
                "type": "invalid_request_error",
                "param": null,
                "code": "invalid_api_key",
            }
        })
    } else {
        serde_json::json!({
            "error": { "code": "unauthorized", "message": message, "hint": hint }
        })
    };
    let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"myco\""),
    );
    r
}

/// A token bucket per client address: `rate` requests a second, bursts of `2 × rate`.
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Buckets kept at most; past it, the full ones (idle clients) are dropped.
const MAX_CLIENTS: usize = 10_000;

impl RateLimit {
    fn new(per_s: u32) -> RateLimit {
        RateLimit {
            rate: f64::from(per_s),
            burst: f64::from(per_s) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request's token, or say in how many seconds there is one.
    fn take(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_CLIENTS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_cookie_is_read_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; myco_token=abc ; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("abc"));
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xmyco_token=abc; myco_token="),
        );
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn a_client_gets_its_burst_then_waits() {
        let r = RateLimit::new(5);
        let ip: IpAddr = [10, 0, 0, 7].into();
        for _ in 0..10 {
            assert!(r.take(ip).is_ok());
        }
        assert_eq!(r.take(ip), Err(1));
        assert!(
            r.take([10, 0, 0, 8].into()).is_ok(),
            "another client has its own"
        );
    }
}
