//! The API's error type: every 4xx says what was wrong; 5xx hide internals but log them.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use nomnom_runtime::defaults::RETRY_AFTER_SECONDS;

/// An error answer: HTTP status, a stable machine-readable code, and a message for people.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// A webhook signature that is missing, malformed, wrong or too old.
    #[error(transparent)]
    Signature(#[from] crate::webhook::SignatureError),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("too many messages are being published right now; retry after {RETRY_AFTER_SECONDS}s")]
    Overloaded,
    #[error("{0}; retry after {RETRY_AFTER_SECONDS}s")]
    Unavailable(String),
    /// The body budget is spent: nothing of the request was read or published.
    #[error("{0}; retry after {RETRY_AFTER_SECONDS}s")]
    Busy(String),
    #[error("the stream is full: {0}")]
    InsufficientStorage(String),
    /// Something that should not happen; the detail goes to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// The JSON shape of an error, also used for batch items.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Signature(_) => "invalid_signature",
            Self::UnsupportedMediaType(_) => "unsupported_content_type",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Unprocessable(_) => "idempotency_key_reused",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Overloaded => "overloaded",
            Self::Unavailable(_) => "unavailable",
            Self::Busy(_) => "busy",
            Self::InsufficientStorage(_) => "insufficient_storage",
            Self::Internal(_) => "internal",
        }
    }

    /// Whether the client should retry the same request later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Overloaded | Self::Unavailable(_) | Self::Busy(_) | Self::InsufficientStorage(_)
        )
    }

    pub fn detail(&self) -> ErrorDetail<'static> {
        let message = match self {
            Self::Internal(_) => {
                "internal error; the server log has the details under this request's x-request-id"
                    .to_owned()
            }
            other => other.to_string(),
        };
        ErrorDetail {
            code: self.code(),
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            Self::Unavailable(_) | Self::InsufficientStorage(_) => {
                tracing::warn!(error = %self, "request failed")
            }
            _ => tracing::debug!(error = %self, "request refused"),
        }
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error: self.detail(),
            }),
        )
            .into_response();
        if self.is_retryable() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
