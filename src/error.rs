//! The one error type the HTTP layer maps to responses: a stable code, a status and a sentence.

use serde::Serialize;
use std::borrow::Cow;
use std::fmt;

/// An error a client can act on. `code` is stable and machine-readable; `message` is a
/// sentence for a person and never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Whether trying the same request again later can succeed.
    pub retryable: bool,
    /// The methods the resource accepts, sent as `Allow` (RFC 9110 requires it on 405).
    #[serde(skip)]
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            retryable: false,
            allow: None,
        }
    }

    /// An error whose code is only known at run time (e.g. relayed from a Durable Object).
    pub fn with_code(status: u16, code: String, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Cow::Owned(code),
            message: message.into(),
            retryable: false,
            allow: None,
        }
    }

    /// A 405's `Allow` header value.
    pub fn allowing(mut self, methods: String) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(400, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(404, "not_found", format!("No {what} with that id exists."))
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            401,
            "unauthorized",
            "This route needs a valid key in the Authorization: Bearer header.",
        )
    }

    /// The JSON body: `{"error": {"code", "message", "retryable"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_message_and_retryable() {
        let e = ApiError::bad_request("invalid_json", "The body is not valid JSON.");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "invalid_json", "message": "The body is not valid JSON.", "retryable": false}})
        );
    }
}
