//! Upstream's optional `[core.auth]` check: the registering CVM's app info
//! is POSTed as JSON to a webhook (plain HTTP, e.g. a sidecar on loopback),
//! and only a 2xx admits it.

use crate::config::AuthConfig;
use crate::registry::Identity;

/// The largest answer read from the webhook.
const MAX_ANSWER: usize = 64 * 1024;

/// Asks the webhook whether `identity` may register; the error says why not.
pub async fn authorise(auth: &AuthConfig, identity: &Identity) -> Result<(), String> {
    let rest = auth
        .url
        .strip_prefix("http://")
        .ok_or_else(|| format!("auth url {} is not http://", auth.url))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let body = serde_json::json!({
        "app_id": identity.app_id,
        "instance_id": identity.instance_id,
        "compose_hash": identity.compose_hash,
    })
    .to_string()
    .into_bytes();
    let call = async {
        let stream = tokio::net::TcpStream::connect(&host_port)
            .await
            .map_err(|e| format!("auth webhook {host_port}: {e}"))?;
        dstack_http_json::post_json(stream, authority, path, body, MAX_ANSWER)
            .await
            .map_err(|e| format!("auth webhook: {e}"))
    };
    let answer = tokio::time::timeout(auth.timeout.0, call)
        .await
        .map_err(|_| "auth webhook timed out".to_owned())??;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "auth webhook answered {}: {}",
            answer.status,
            answer.error_message()
        ))
    }
}
