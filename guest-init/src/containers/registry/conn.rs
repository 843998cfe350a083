//! HTTP/1.1 connections to registries and storage, over TCP or TLS, with
//! the idle one of each origin kept for the next request.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::{CONNECT_TIMEOUT, READ_TIMEOUT, RegistryError};

/// The CA bundle in the initramfs (the image builder writes it there);
/// `SSL_CERT_FILE` overrides it, as for other TLS clients.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long a kept connection may take to become ready for the next request.
const IDLE_READY: Duration = Duration::from_secs(1);

/// Scheme and host:port: what a connection can be reused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) https: bool,
    pub(super) authority: String,
}

/// A connection in use; give it back with [`Connections::release`] once
/// its response has been read to the end, or drop it to close it.
#[derive(Debug)]
pub(super) struct Lease {
    origin: Origin,
    sender: SendRequest<Empty<Bytes>>,
}

impl Lease {
    pub(super) fn authority(&self) -> &str {
        &self.origin.authority
    }
}

/// Idle connections and the TLS settings new ones use.
#[derive(Default)]
pub(super) struct Connections {
    idle: Mutex<Vec<Lease>>,
    /// Built on first HTTPS use, so an HTTP-only setup needs no CA bundle.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl Connections {
    /// Sends `request` (a GET) to `origin` on an idle or new connection.
    pub(super) async fn send(
        &self,
        origin: &Origin,
        request: Request<Empty<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), RegistryError> {
        if let Some(mut lease) = self.take_idle(origin).await {
            // The server may close an idle connection just as we send; a
            // GET is safe to repeat, so that failure costs a new connection.
            if let Ok(response) = send_on(&mut lease, copy(&request)).await {
                return Ok((response, lease));
            }
        }
        let mut lease = self.connect(origin).await?;
        let response = send_on(&mut lease, request).await?;
        Ok((response, lease))
    }

    /// Keeps a connection whose last response was read to the end.
    pub(super) fn release(&self, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|l| l.origin != lease.origin);
            idle.push(lease);
        }
    }

    /// The idle connection to `origin`, once it can take a request.
    async fn take_idle(&self, origin: &Origin) -> Option<Lease> {
        let mut lease = {
            let mut idle = self.idle.lock().ok()?;
            let i = idle.iter().position(|l| &l.origin == origin)?;
            idle.swap_remove(i)
        };
        // Ready once its connection task has seen the last response end;
        // an error means the server closed it.
        tokio::time::timeout(IDLE_READY, lease.sender.ready())
            .await
            .ok()?
            .ok()?;
        Some(lease)
    }

    async fn connect(&self, origin: &Origin) -> Result<Lease, RegistryError> {
        let authority = origin.authority.clone();
        let connect_error = |source| RegistryError::Connect {
            authority: authority.clone(),
            source,
        };
        let parsed: hyper::http::uri::Authority =
            origin
                .authority
                .parse()
                .map_err(|_| RegistryError::BadUrl {
                    url: authority.clone(),
                })?;
        let port = parsed
            .port_u16()
            .unwrap_or(if origin.https { 443 } else { 80 });
        let host = parsed.host();
        let tls = if origin.https {
            Some(self.tls_config()?)
        } else {
            None
        };
        let handshake = async {
            // `host` keeps an IPv6 literal's brackets, which the resolver needs.
            let tcp = TcpStream::connect(format!("{host}:{port}"))
                .await
                .map_err(connect_error)?;
            let _ = tcp.set_nodelay(true);
            let io_error = |e: hyper::Error| RegistryError::Http {
                authority: authority.clone(),
                source: e,
            };
            let sender = match tls {
                None => {
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .map_err(io_error)?;
                    tokio::spawn(conn);
                    sender
                }
                Some(config) => {
                    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                        .map_err(|_| RegistryError::BadUrl {
                            url: authority.clone(),
                        })?;
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(connect_error)?;
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .map_err(io_error)?;
                    tokio::spawn(conn);
                    sender
                }
            };
            Ok(sender)
        };
        // The connection task ends when its `SendRequest` is dropped.
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| RegistryError::TimedOut {
                authority: authority.clone(),
                after: CONNECT_TIMEOUT,
            })??;
        Ok(Lease {
            origin: origin.clone(),
            sender,
        })
    }

    /// Trusts only the roots in `bundle` (instead of the system's).
    #[cfg(test)]
    pub(super) fn trust_only(&self, bundle: &std::path::Path) {
        let config = client_config(&bundle.to_string_lossy()).expect("test CA bundle");
        assert!(self.tls.set(Arc::new(config)).is_ok(), "TLS already set up");
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        let path = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| CA_BUNDLE.to_string());
        let config = Arc::new(client_config(&path)?);
        Ok(self.tls.get_or_init(|| config).clone())
    }
}

/// Sends `request` on `lease`'s connection; the answer's head in time.
async fn send_on(
    lease: &mut Lease,
    request: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, RegistryError> {
    let authority = &lease.origin.authority;
    tokio::time::timeout(READ_TIMEOUT, lease.sender.send_request(request))
        .await
        .map_err(|_| RegistryError::TimedOut {
            authority: authority.clone(),
            after: READ_TIMEOUT,
        })?
        .map_err(|source| RegistryError::Http {
            authority: authority.clone(),
            source,
        })
}

/// The same GET again (a `Request` is not `Clone`).
fn copy(request: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut again = Request::new(Empty::new());
    *again.uri_mut() = request.uri().clone();
    *again.headers_mut() = request.headers().clone();
    again
}

/// TLS with the bundle's roots, on the ring provider the rest of the guest
/// uses (named here, so no process-wide default has to be installed).
fn client_config(bundle: &str) -> Result<rustls::ClientConfig, RegistryError> {
    let bundle_error = |source| RegistryError::CaBundle {
        path: bundle.to_string(),
        source,
    };
    let pem = std::fs::read(bundle).map_err(bundle_error)?;
    let mut roots = rustls::RootCertStore::empty();
    // A bundle may hold certificates webpki cannot use; the rest still count.
    let (added, _ignored) = roots
        .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if added == 0 {
        return Err(bundle_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no usable certificates",
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(RegistryError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
