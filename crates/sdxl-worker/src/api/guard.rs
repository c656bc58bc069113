//! Local API hardening (SPEC §12 "Local API"): the optional bearer token (`SDXL_API_TOKEN`;
//! `/health` exempt), the JSON content type of POST bodies, and cancelling a waiting request's
//! job when its client goes away.

use super::error::ApiError;
use super::state::ApiState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use std::sync::Arc;

/// Env var holding the local API's bearer token.
pub const API_TOKEN_ENV: &str = "SDXL_API_TOKEN";

/// Middleware: 401 without the token (when one is configured; `/health` is exempt), then 415
/// for a POST whose body is not declared `application/json`.
pub async fn guard(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.config.api_token {
        if !is_health(req.uri().path()) && !authorized(req.headers(), token.expose()) {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                format!(
                    "missing or wrong API token (send `Authorization: Bearer <{API_TOKEN_ENV}>`)"
                ),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    if req.method() == Method::POST && carries_body(req.headers()) && !is_json(req.headers()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the request body must be JSON, sent with `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(req).await
}

/// `/health` and `/v2/{endpoint_id}/health`.
fn is_health(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/health"
        || path
            .strip_prefix("/v2/")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(id, tail)| !id.is_empty() && tail == "health")
}

/// `Authorization: Bearer <token>` (what the runpod SDK's `Endpoint` client sends), a bare
/// `<token>` (RunPod's own worker-side style), or HTTP Basic with the token as the password
/// (what A1111 clients such as `webuiapi`'s `set_auth` send; any user name).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let value = value.trim();
    if let Some((scheme, rest)) = value.split_once(' ') {
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return same(rest, token);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|pair| pair.split_once(':').map(|(_, p)| same(p, token)))
                .unwrap_or(false);
        }
    }
    same(value, token)
}

/// Compares without an early exit on the first differing byte.
fn same(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= usize::from(x ^ a.get(i).copied().unwrap_or(!x));
    }
    diff == 0 && !token.is_empty()
}

fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// `application/json`, parameters allowed (`; charset=utf-8`), any case.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Cancels a job when dropped while armed: held by a request handler that waits for its job
/// (`/runsync`, `/sdapi/v1/txt2img`), so a client that disconnects (axum drops the handler's
/// future) cancels the job it queued instead of leaving it to run for nobody.
pub struct CancelOnDrop {
    state: Arc<ApiState>,
    id: String,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed guard for job `id`.
    pub fn new(state: Arc<ApiState>, id: String) -> Self {
        Self {
            state,
            id,
            armed: true,
        }
    }

    /// The response is being delivered: keep the job.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            if let Some(status) = self.state.cancel(&self.id) {
                tracing::info!(
                    job_id = %self.id,
                    status,
                    "the client disconnected before its result; job cancelled"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_paths_and_token_forms() {
        assert!(is_health("/health") && is_health("/v2/ep1/health"));
        assert!(!is_health("/v2//health") && !is_health("/runsync") && !is_health("/v2/x/run"));
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "tok"));
        for ok in ["Bearer tok", "bearer  tok", "tok", "Basic dXNlcjp0b2s="] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(ok).unwrap());
            assert!(authorized(&h, "tok"), "{ok}");
        }
        for bad in [
            "Bearer to",
            "Bearer tokk",
            "Bearer",
            "Basic dXNlcjp0b2w=",
            "x",
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(bad).unwrap());
            assert!(!authorized(&h, "tok"), "{bad}");
        }
        assert!(!same("", ""));
    }
}
