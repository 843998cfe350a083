//! Idle TLS connections for the memory figure: each completes its
//! handshake (the proxy has done all the work it does before a request)
//! and then sends nothing, like a browser's spare keep-alive connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::Digest;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Handshakes in flight at once: a burst of 1,000 SYNs overflows a
/// listen backlog (nginx's is 511) and the kernel's retry after a drop
/// costs a second.
const IN_FLIGHT: usize = 32;

/// How long one connection may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens `count` connections, prints `held <count> <certificate SHA-256>`
/// and holds them until the process is killed.
pub(crate) async fn hold(
    to: SocketAddr,
    server_name: &str,
    count: usize,
    ca: &Path,
) -> anyhow::Result<()> {
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.context("bad PEM certificate")?)
            .context("unusable certificate")?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned()).context("bad server name")?;

    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (connector, name, permits) = (connector.clone(), name.clone(), permits.clone());
        opening.spawn(async move {
            let _permit = permits.acquire_owned().await;
            tokio::time::timeout(OPEN_TIMEOUT, open(&connector, to, name))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        });
    }
    let mut held: Vec<TlsStream<TcpStream>> = Vec::with_capacity(count);
    while let Some(opened) = opening.join_next().await {
        held.push(opened?.with_context(|| format!("connection {} to {to}", held.len() + 1))?);
    }
    let served = held
        .first()
        .and_then(|tls| tls.get_ref().1.peer_certificates()?.first().cloned())
        .map(|leaf| hex::encode(sha2::Sha256::digest(leaf)))
        .unwrap_or_default();
    println!("held {} {served}", held.len());
    std::future::pending::<()>().await;
    drop(held);
    Ok(())
}

async fn open(
    connector: &TlsConnector,
    to: SocketAddr,
    name: ServerName<'static>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(to).await.context("TCP connect")?;
    let tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    Ok(tls)
}
