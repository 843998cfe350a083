//! Joining the gateway's network as a CVM does: register through the
//! Debug RPC (upstream's `Debug.RegisterCvm`, no attestation), then bring
//! up a userspace WireGuard interface on the address the gateway handed
//! out, with every gateway as a peer that has an endpoint and a keepalive,
//! so the CVM side starts the handshakes (gateway/tests/cluster.rs does
//! the same).

use std::net::{Ipv4Addr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dstack_proto::gateway::RegisterCvmResponse;
use dstack_wgnet::{Peer, WgConfig, WgNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why the backend could not join.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    /// The Debug RPC could not be reached or the exchange broke off.
    #[error("Debug RPC at {addr}")]
    Rpc {
        /// Its address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The gateway answered with an error.
    #[error("the gateway refused the registration: {answer}")]
    Refused {
        /// Its status line and body.
        answer: String,
    },
    /// The answer is not what `RegisterCvm` returns.
    #[error("unexpected registration answer: {reason}")]
    Answer {
        /// What is wrong with it.
        reason: String,
    },
    /// The tunnel could not be set up.
    #[error("WireGuard")]
    Tunnel(#[from] dstack_wgnet::WgError),
}

fn bad_answer(reason: impl Into<String>) -> JoinError {
    JoinError::Answer {
        reason: reason.into(),
    }
}

/// The policy a CVM without `port_policy` in its app-compose reports:
/// every port open.
const OPEN_POLICY: &str = r#"{"ports": [], "restrict_mode": false}"#;

/// Registers a fresh key as an instance of `app_id` and returns the
/// running tunnel.
pub(crate) async fn join_as_cvm(debug_rpc: SocketAddr, app_id: &str) -> Result<WgNet, JoinError> {
    let private = dstack_wgnet::generate_private_key();
    let public = B64.encode(dstack_wgnet::public_key(&private));
    let request = format!(
        r#"{{"client_public_key": "{public}", "app_id": "{app_id}", "instance_id": "{app_id}", "port_policy": {OPEN_POLICY}}}"#
    );
    let answer = post(debug_rpc, "/prpc/Debug.RegisterCvm", &request).await?;
    let answer: RegisterCvmResponse =
        serde_json::from_str(&answer).map_err(|e| bad_answer(format!("{e}: {answer}")))?;
    let ip: Ipv4Addr = answer
        .wg
        .client_ip
        .parse()
        .map_err(|_| bad_answer(format!("client_ip {:?}", answer.wg.client_ip)))?;
    if answer.wg.servers.is_empty() {
        return Err(bad_answer("no gateway to peer with"));
    }
    let net = WgNet::start(WgConfig::new(
        private,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ip,
    ))
    .await?;
    for server in &answer.wg.servers {
        let key = B64
            .decode(&server.pk)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .ok_or_else(|| bad_answer(format!("gateway key {:?}", server.pk)))?;
        let gateway_ip = server
            .ip
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad_answer(format!("gateway address {:?}", server.ip)))?;
        let endpoint = server
            .endpoint
            .parse()
            .map_err(|_| bad_answer(format!("gateway endpoint {:?}", server.endpoint)))?;
        net.set_peer(Peer {
            public_key: key,
            allowed_ip: gateway_ip,
            endpoint: Some(endpoint),
            // A kernel interface with PersistentKeepalive sends its first
            // keepalive at once; boringtun's comes one interval after
            // start, so a short one starts the handshake as promptly.
            keepalive: Some(1),
        })?;
    }
    Ok(net)
}

/// One JSON POST (`Connection: close`); the body of a 200 answer.
async fn post(addr: SocketAddr, path: &str, body: &str) -> Result<String, JoinError> {
    let io = |source| JoinError::Rpc { addr, source };
    let mut tcp = TcpStream::connect(addr).await.map_err(io)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad_answer(format!("no HTTP head in {answer:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(JoinError::Refused {
            answer: format!("{status}: {body}"),
        });
    }
    Ok(body.to_owned())
}
