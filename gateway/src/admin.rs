//! The admin API (UPSTREAM §10.8) on its own listener: a bearer token by
//! default (`Authorization: Bearer`, `X-Admin-Token`, or `?token=` on GET),
//! from `DSTACK_GATEWAY_ADMIN_TOKEN` or `ADMIN_API_TOKEN`. Methods at
//! `/prpc/Admin.<Method>` and `/prpc/<Method>`; `/metrics` in Prometheus text.

use std::sync::Arc;

use dstack_proto::gateway::{
    InstancePortPolicyRequest, InstancePortPolicyResponse, RenewCertResponse, SetNodeStatusRequest,
    StatusResponse,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::http::{error, json};
use crate::node::Node;

const MAX_BODY: usize = 64 * 1024;

/// Who may call the admin API.
#[derive(Clone)]
pub enum AdminAuth {
    /// Callers must present this token.
    Token(String),
    /// Anyone (`[admin] insecure_no_auth`).
    Open,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token(_) => "AdminAuth::Token(<redacted>)",
            Self::Open => "AdminAuth::Open",
        })
    }
}

impl AdminAuth {
    /// The token from the environment; none is an error unless auth is off.
    pub fn from_env(insecure_no_auth: bool) -> Result<Self, String> {
        if insecure_no_auth {
            return Ok(Self::Open);
        }
        for name in ["DSTACK_GATEWAY_ADMIN_TOKEN", "ADMIN_API_TOKEN"] {
            if let Ok(token) = std::env::var(name)
                && !token.trim().is_empty()
            {
                return Ok(Self::Token(token.trim().to_owned()));
            }
        }
        Err("the admin API needs a token: set DSTACK_GATEWAY_ADMIN_TOKEN (or [admin] insecure_no_auth = true for development)".into())
    }

    fn admits(&self, req: &Request<Incoming>) -> bool {
        let Self::Token(token) = self else {
            return true;
        };
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let presented = header(AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| header("x-admin-token"))
            .map(str::to_owned)
            .or_else(|| {
                (req.method() == Method::GET)
                    .then(|| req.uri().query())
                    .flatten()
                    .and_then(|q| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix("token="))
                            .map(str::to_owned)
                    })
            });
        presented.is_some_and(|p| constant_time_eq(p.trim().as_bytes(), token.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(
    node: &Arc<Node>,
    auth: &AdminAuth,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !auth.admits(&req) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    let path = req.uri().path().to_owned();
    if path == "/metrics" {
        let (instances, nodes) = {
            let view = node.view.read();
            (view.instances.len(), view.nodes.len())
        };
        let certs = node.view.read().certs.len();
        #[allow(clippy::cast_precision_loss)] // counts are far below 2^52
        let gauges = [
            ("instances", "Registered instances.", instances as f64),
            ("nodes", "Gateway nodes in the cluster.", nodes as f64),
            ("certificates", "Certificates loaded.", certs as f64),
        ];
        let mut response = Response::new(Full::new(Bytes::from(node.metrics.render(&gauges))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return response;
    }
    let Some(method) = dstack_proto::prpc::method_name(&path, "Admin").map(str::to_owned) else {
        return error(StatusCode::NOT_FOUND, format!("no such path {path}"));
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    macro_rules! args {
        ($t:ty) => {
            match dstack_proto::prpc::decode_args::<$t>(false, "", &body) {
                Ok(a) => a,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            }
        };
    }
    let store =
        |e: dstack_cluster_kv::KvError| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    match method.as_str() {
        "Status" => {
            let view = node.view.read();
            json(
                StatusCode::OK,
                &StatusResponse {
                    id: node.config.node.id,
                    url: node.config.node.url.clone(),
                    num_connections: u64::try_from(node.metrics.active_now()).unwrap_or(0),
                    hosts: node.hosts(),
                    nodes: view.nodes.values().map(|n| n.info()).collect(),
                    status: if view.is_down(node.config.node.id) {
                        "down".into()
                    } else {
                        "up".into()
                    },
                },
            )
        }
        "GetInfo" => {
            #[derive(serde::Deserialize, Default)]
            #[serde(default)]
            struct GetInfo {
                id: String,
            }
            let request = args!(GetInfo);
            let host = node
                .hosts()
                .into_iter()
                .find(|h| h.instance_id == request.id || h.app_id == request.id);
            json(
                StatusCode::OK,
                &serde_json::json!({ "found": host.is_some(), "info": host }),
            )
        }
        "GetMeta" => {
            let hosts = node.hosts();
            let online = hosts.iter().filter(|h| h.latest_handshake > 0).count();
            json(
                StatusCode::OK,
                &serde_json::json!({ "registered": hosts.len(), "online": online }),
            )
        }
        "SetNodeStatus" => {
            let request = args!(SetNodeStatusRequest);
            if request.status != "up" && request.status != "down" {
                return error(StatusCode::BAD_REQUEST, "invalid status: up or down");
            }
            let id = if request.id == 0 {
                node.config.node.id
            } else {
                request.id
            };
            let key = format!("status/{id}");
            match node.kv.put(&key, &request.status).await {
                Ok(()) => {
                    // Effective here before the answer (the watch is later):
                    // a caller that sets a node down and then registers must
                    // see the registration refused.
                    node.apply(&key, Some(serde_json::Value::from(request.status)));
                    json(StatusCode::OK, &serde_json::json!({}))
                }
                Err(e) => store(e),
            }
        }
        "GetNodeStatuses" => {
            let view = node.view.read();
            let statuses: Vec<_> = view
                .nodes
                .keys()
                .map(|id| {
                    serde_json::json!({
                        "node_id": id,
                        "status": if view.is_down(*id) { "down" } else { "up" },
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "statuses": statuses }))
        }
        "RenewCert" => {
            node.renew_now();
            json(StatusCode::OK, &RenewCertResponse { renewed: true })
        }
        "ReloadCert" => {
            node.refresh_pages().await;
            json(StatusCode::OK, &serde_json::json!({}))
        }
        "SetInstancePortPolicy" => {
            let request = args!(InstancePortPolicyRequest);
            let Some(policy) = request.policy else {
                return error(StatusCode::BAD_REQUEST, "invalid policy: missing");
            };
            let key = format!("policy/{}", request.instance_id);
            match node.kv.put(&key, &policy).await {
                Ok(()) => {
                    node.apply(&key, serde_json::to_value(&policy).ok());
                    json(StatusCode::OK, &serde_json::json!({}))
                }
                Err(e) => store(e),
            }
        }
        "ClearInstancePortPolicy" => {
            let request = args!(InstancePortPolicyRequest);
            let key = format!("policy/{}", request.instance_id);
            match node.kv.delete(&key).await {
                Ok(_) => {
                    node.apply(&key, None);
                    json(StatusCode::OK, &serde_json::json!({}))
                }
                Err(e) => store(e),
            }
        }
        "GetInstancePortPolicy" => {
            let request = args!(InstancePortPolicyRequest);
            let view = node.view.read();
            let Some(instance) = view.instances.get(&request.instance_id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no instance {}", request.instance_id),
                );
            };
            let (policy, source) = view.policy(instance);
            json(
                StatusCode::OK,
                &InstancePortPolicyResponse {
                    policy,
                    source: source.into(),
                },
            )
        }
        other => error(StatusCode::NOT_FOUND, format!("no method {other}")),
    }
}

/// Serves the admin API on `listener`.
pub async fn serve(listener: TcpListener, node: Arc<Node>, auth: AdminAuth) {
    crate::http::serve_plain(listener, move |req| {
        let node = node.clone();
        let auth = auth.clone();
        async move { handle(&node, &auth, req).await }
    })
    .await;
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn auth_is_required_unless_turned_off() {
        assert!(matches!(AdminAuth::from_env(true), Ok(AdminAuth::Open)));
    }
}
