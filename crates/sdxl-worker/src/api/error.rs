//! JSON error replies of the local API: every error answer is `{"error": "...", "code": "..."}`.

use crate::error::{ErrorCode, WorkerError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An HTTP error with a JSON body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (a SPEC §4 code, or `NOT_FOUND` / `METHOD_NOT_ALLOWED` /
    /// `PAYLOAD_TOO_LARGE` / `QUEUE_FULL` for HTTP-level problems).
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// `INVALID_INPUT` with the given HTTP status.
    pub fn invalid(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorCode::InvalidInput.as_str(), message)
    }

    /// A worker error as an HTTP reply (422 for input problems, 429 for a full queue, 503 for
    /// OOM, 409 for a cancelled job, 500 otherwise).
    pub fn from_job(e: &WorkerError) -> Self {
        let code = e.code();
        let status = match code {
            ErrorCode::InvalidInput | ErrorCode::UnknownModel => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::OutOfMemory => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Cancelled => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, code.as_str(), e.message())
    }

    /// Unknown route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "code": self.code, "detail": self.message})),
        )
            .into_response()
    }
}

/// Parses a request body as JSON, mapping every failure (size limit, broken stream, invalid
/// UTF-8, syntax, nesting depth) to a JSON error.
pub fn parse_json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rej| {
        let status = rej.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "PAYLOAD_TOO_LARGE",
                format!("request body is too large: {rej}"),
            )
        } else {
            ApiError::invalid(status, format!("cannot read the request body: {rej}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            "the request body is empty; send a JSON object",
        ));
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            "the request body is not valid UTF-8",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}
