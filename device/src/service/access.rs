//! Who may use the HTTP API: a Host check against DNS rebinding, and an optional bearer token.
//!
//! * **Host**: a page in a browser on the device can reach `127.0.0.1` through a name it controls
//!   (DNS rebinding); the browser then sends that name as `Host`. Only the loopback names
//!   (`localhost`, `127.0.0.1`, `[::1]`), the bound address and the names given with
//!   `--allow-host` are answered; others get 403. `--allow-host '*'` turns the check off.
//! * **Token**: with `--token-file`, every route but `/healthz` needs `Authorization: Bearer <t>`
//!   (or `?token=<t>`, for an `<img>` of the stream); otherwise 401. Binding an address that is
//!   not loopback requires a token: anyone on the network would see the camera.

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The route anyone who may reach the port may read (systemd and monitors poll it).
const OPEN_ROUTE: &str = "/healthz";

/// The access rules of one service.
#[derive(Debug, Clone)]
pub struct Access {
    /// Allowed `Host` names (lower case, without port); `None`: any.
    hosts: Option<Vec<String>>,
    token: Option<String>,
}

impl Access {
    /// The rules for a service bound to `bind`: loopback names, the bound address and
    /// `extra_hosts` (`*` = any host), and the token in `token_file`. A non-loopback `bind` without
    /// a token is an error.
    pub fn new(
        bind: SocketAddr,
        extra_hosts: &[String],
        token_file: Option<&Path>,
    ) -> Result<Self> {
        let token = token_file.map(read_token).transpose()?;
        if !bind.ip().is_loopback() && token.is_none() {
            bail!(
                "--http {bind} is not a loopback address: anyone on the network could see the \
                 camera; give --token-file (a file holding a secret) to require a bearer token"
            );
        }
        let hosts = match extra_hosts.iter().any(|h| h == "*") {
            true => None,
            false => {
                let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
                    .into_iter()
                    .map(String::from)
                    .collect();
                if !bind.ip().is_unspecified() {
                    hosts.push(match bind {
                        SocketAddr::V4(a) => a.ip().to_string(),
                        SocketAddr::V6(a) => format!("[{}]", a.ip()),
                    });
                }
                hosts.extend(extra_hosts.iter().map(|h| h.to_ascii_lowercase()));
                Some(hosts)
            }
        };
        Ok(Access { hosts, token })
    }

    /// Whether a request with this `Host` header may be answered.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(allowed) = &self.hosts else {
            return true;
        };
        host.map(host_name)
            .is_some_and(|name| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
    }

    /// Whether a request to `path` carries the token (or needs none).
    fn token_ok(&self, path: &str, authorization: Option<&str>, query: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if path == OPEN_ROUTE {
            return true;
        }
        let from_header = authorization.and_then(|a| a.strip_prefix("Bearer "));
        let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        [from_header, from_query]
            .into_iter()
            .flatten()
            .any(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
    }
}

/// The name part of a `Host` header: `[::1]:8080` → `[::1]`, `cam.local:80` → `cam.local`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 {
        bail!(
            "{}: the token has {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
            path.display(),
            token.len()
        );
    }
    Ok(token.to_string())
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
    }
    r
}

/// The middleware: 403 for a Host not allowed, 401 without the token, else the route.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    if let Some(refused) = check(&access, &req) {
        return refused;
    }
    next.run(req).await
}

/// The refusal `req` gets, if any.
fn check(access: &Access, req: &Request) -> Option<Response> {
    let text = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !access.host_allowed(text(header::HOST)) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "this Host is not allowed (see mce-device serve --allow-host)",
        ));
    }
    let (path, query) = (req.uri().path(), req.uri().query());
    if !access.token_ok(path, text(header::AUTHORIZATION), query) {
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    #[test]
    fn loopback_names_and_the_bound_address_are_the_default_hosts() {
        let a = Access::new(local(), &[], None).unwrap();
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(a.host_allowed(Some(ok)), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1.evil.example", "", "[::2]"] {
            assert!(!a.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!a.host_allowed(None));
        let more = Access::new(local(), &["cam.local".into()], None).unwrap();
        assert!(more.host_allowed(Some("cam.local:8080")));
        let any = Access::new(local(), &["*".into()], None).unwrap();
        assert!(any.host_allowed(Some("whatever")) && any.host_allowed(None));
    }

    #[test]
    fn a_token_is_required_off_loopback_and_checked_everywhere_but_healthz() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("token");
        let wide: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let e = Access::new(wide, &[], None).unwrap_err().to_string();
        assert!(e.contains("--token-file"), "{e}");
        std::fs::write(&file, "short\n").unwrap();
        let e = Access::new(wide, &[], Some(&file)).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let a = Access::new(wide, &[], Some(&file)).unwrap();
        let t = "0123456789abcdef0123";
        assert!(a.token_ok("/healthz", None, None));
        assert!(!a.token_ok("/results", None, None));
        assert!(!a.token_ok("/results", Some("Bearer wrong"), None));
        assert!(a.token_ok("/results", Some(&format!("Bearer {t}")), None));
        assert!(a.token_ok("/stream.mjpg", None, Some(&format!("x=1&token={t}"))));
        assert!(!a.token_ok("/stream.mjpg", None, Some("token=0123")));
        let open = Access::new(local(), &[], None).unwrap();
        assert!(open.token_ok("/results", None, None));
    }
}
