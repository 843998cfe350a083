//! Bearer-token auth for the TCP listener. The unix socket needs none: its
//! 0600 mode already limits it to the supervisor's user.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dstack_proto::ApiError;

/// The secret TCP clients must present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret (DESIGN §7: no secret in a log line).
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from a token file's content (surrounding whitespace ignored).
    /// `None` when it is empty.
    pub fn from_file_content(text: &str) -> Option<Self> {
        let token = text.trim();
        (!token.is_empty()).then(|| Self(token.into()))
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, header_value: Option<&[u8]>) -> bool {
        let Some(given) = header_value.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(given, self.0.as_bytes())
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: 401 with a JSON error unless the request carries the token.
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if token.accepts(given) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(ApiError::new("missing or wrong bearer token")),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks() {
        assert!(Token::from_file_content(" \n").is_none());
        let token = Token::from_file_content("s3cret\n").unwrap();
        assert!(token.accepts(Some(b"Bearer s3cret")));
        assert!(!token.accepts(Some(b"Bearer s3cre")));
        assert!(!token.accepts(Some(b"Bearer s3cret2")));
        assert!(!token.accepts(Some(b"Basic s3cret")));
        assert!(!token.accepts(None));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }
}
