//! A registry client for pulls (OCI distribution API v2, GET only) on the
//! hyper and rustls the binary has anyway: manifests and blobs by path,
//! anonymous bearer tokens, redirects to blob storage, plain HTTP only for
//! listed registries. Content is not checked here; `pull` hashes it.
//!
//! Connections are kept per origin while idle, so a pull's manifest, config
//! and layers share one TLS session per host (layers are fetched one after
//! another, so one idle connection per origin is all that is reused).

mod auth;
mod conn;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode, Uri};
use oci_spec::distribution::Reference;

use self::conn::{Connections, Lease, Origin};

/// Connecting (TCP and TLS handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response's head, and each piece of its body, must arrive within this.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Registries redirect blobs to storage once; a few more allow for CDNs.
const MAX_REDIRECTS: usize = 10;
/// Registries must accept manifests of at least 4 MiB (distribution spec).
const MAX_MANIFEST: usize = 4 << 20;
/// How much of an error answer is kept for the message.
const MAX_ERROR_BODY: usize = 4096;

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The URL (registry, realm or redirect target) is not usable.
    #[error("invalid URL {url:?}")]
    BadUrl {
        /// The URL as built or received.
        url: String,
    },
    /// Plain HTTP to a registry that is not listed as insecure.
    #[error("{url} is plain HTTP and {authority} is not an insecure registry")]
    Insecure {
        /// The URL.
        url: String,
        /// Its host and port.
        authority: String,
    },
    /// The CA bundle that HTTPS trusts could not be read.
    #[error("cannot load the CA bundle {path}")]
    CaBundle {
        /// Where it was looked for.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings were refused (the provider lacks the protocol versions).
    #[error("TLS settings refused")]
    Tls(#[source] rustls::Error),
    /// The TCP connection or TLS handshake failed.
    #[error("cannot connect to {authority}")]
    Connect {
        /// Host and port.
        authority: String,
        /// The OS or TLS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange broke off.
    #[error("HTTP exchange with {authority} failed")]
    Http {
        /// Host and port.
        authority: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// No answer (or no next piece of it) in time.
    #[error("{authority} did not answer within {after:?}")]
    TimedOut {
        /// Host and port.
        authority: String,
        /// The time limit.
        after: Duration,
    },
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the answer's body.
        message: String,
    },
    /// A redirect without a usable `Location`, or too many of them.
    #[error("bad redirect from {url}: {reason}")]
    Redirect {
        /// The URL that redirected.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The registry wants credentials we do not have, or a scheme we do
    /// not speak (only anonymous bearer tokens are supported).
    #[error("{url} needs authorization: {challenge:?}")]
    Unauthorized {
        /// The URL asked.
        url: String,
        /// The `WWW-Authenticate` challenge, if any.
        challenge: String,
    },
    /// The token service's answer has no token.
    #[error("token answer from {realm} is not a token")]
    BadToken {
        /// The token service.
        realm: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// More bytes arrived than the content may have.
    #[error("{url} sent more than {limit} bytes")]
    TooLarge {
        /// The URL asked.
        url: String,
        /// The size the descriptor or our limit allows.
        limit: u64,
    },
}

/// A registry client: one per puller, shared by its pulls.
pub(crate) struct Registry {
    /// Registries (host:port) reached over plain HTTP.
    insecure: Vec<String>,
    connections: Connections,
    /// Bearer tokens by `<registry>/<repository>`.
    tokens: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are credentials: never printed.
        f.debug_struct("Registry")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// A blob being downloaded: its body, read a piece at a time.
pub(crate) struct Blob<'a> {
    registry: &'a Registry,
    url: String,
    body: Incoming,
    lease: Option<Lease>,
    remaining: u64,
    limit: u64,
}

impl Blob<'_> {
    /// The next piece, or `None` at the end (the connection is then reused).
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let authority = self
            .lease
            .as_ref()
            .map(Lease::authority)
            .unwrap_or_default();
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| RegistryError::TimedOut {
                    authority: authority.to_string(),
                    after: READ_TIMEOUT,
                })?;
            let Some(frame) = frame else {
                if let Some(lease) = self.lease.take() {
                    self.registry.connections.release(lease);
                }
                return Ok(None);
            };
            let frame = frame.map_err(|source| RegistryError::Http {
                authority: authority.to_string(),
                source,
            })?;
            // Trailers carry nothing we need.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.remaining = self
                .remaining
                .checked_sub(data.len() as u64)
                .ok_or_else(|| RegistryError::TooLarge {
                    url: self.url.clone(),
                    limit: self.limit,
                })?;
            return Ok(Some(data));
        }
    }
}

impl Registry {
    /// A client that may use plain HTTP for the `insecure` registries.
    pub(crate) fn new(insecure: Vec<String>) -> Self {
        Registry {
            insecure,
            connections: Connections::default(),
            tokens: Mutex::default(),
        }
    }

    /// The manifest `reference` names (by digest if it has one, else by
    /// tag), as one of the `accept`ed media types: its raw bytes.
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Vec<u8>, RegistryError> {
        let tag_or_digest = reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
        let path = format!("manifests/{tag_or_digest}");
        let accept = accept.join(", ");
        let (url, response, lease) = self.get(reference, &path, Some(&accept)).await?;
        let body = read_limited(response, &lease, &url, MAX_MANIFEST).await?;
        self.connections.release(lease);
        Ok(body.to_vec())
    }

    /// Starts downloading the blob `digest` of `size` bytes from
    /// `reference`'s repository.
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<Blob<'_>, RegistryError> {
        let (url, response, lease) = self
            .get(reference, &format!("blobs/{digest}"), None)
            .await?;
        Ok(Blob {
            registry: self,
            url,
            body: response.into_body(),
            lease: Some(lease),
            remaining: size,
            limit: size,
        })
    }

    /// GETs `/v2/<repository>/<path>` on `reference`'s registry with the
    /// repository's token, fetching one when the registry asks for it, and
    /// follows redirects. Returns the final URL and a successful response.
    async fn get(
        &self,
        reference: &Reference,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(String, Response<Incoming>, Lease), RegistryError> {
        let registry = reference.resolve_registry();
        let repository = reference.repository();
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{registry}/v2/{repository}/{path}");
        let key = format!("{registry}/{repository}");
        let mut token = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let mut fresh_token = false;
        loop {
            let (final_url, response, lease) = self.follow(&url, accept, token.as_deref()).await?;
            // A cached token may have expired: one new token, then the 401 stands.
            if response.status() != StatusCode::UNAUTHORIZED || fresh_token {
                return check_status(final_url, response, lease).await;
            }
            let header = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let challenge =
                auth::Challenge::parse(&header).ok_or_else(|| RegistryError::Unauthorized {
                    url: final_url.clone(),
                    challenge: header.clone(),
                })?;
            drain(response, lease, &self.connections).await;
            let new = self.token(&challenge, repository).await?;
            if let Ok(mut tokens) = self.tokens.lock() {
                tokens.insert(key.clone(), new.clone());
            }
            token = Some(new);
            fresh_token = true;
        }
    }

    /// An anonymous pull token for `repository` from the challenge's realm.
    async fn token(
        &self,
        challenge: &auth::Challenge,
        repository: &str,
    ) -> Result<String, RegistryError> {
        let url = challenge.token_url(repository);
        let (url, response, lease) = self.follow(&url, Some("application/json"), None).await?;
        let (url, response, lease) = check_status(url, response, lease).await?;
        let body = read_limited(response, &lease, &url, MAX_MANIFEST).await?;
        self.connections.release(lease);
        auth::parse_token(&body).map_err(|source| RegistryError::BadToken {
            realm: challenge.realm.clone(),
            source,
        })
    }

    fn is_insecure(&self, authority: &str) -> bool {
        self.insecure.iter().any(|i| i == authority)
    }

    /// GETs `url`, following redirects; `bearer` is sent only to the first
    /// URL's origin (storage redirects carry their own signed query).
    async fn follow(
        &self,
        url: &str,
        accept: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<(String, Response<Incoming>, Lease), RegistryError> {
        let mut uri = parse_url(url)?;
        let first = self.origin(&uri)?;
        for _ in 0..=MAX_REDIRECTS {
            let origin = self.origin(&uri)?;
            let mut request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header(header::HOST, origin.authority.as_str())
                .header(header::USER_AGENT, dstack_http_json::USER_AGENT);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            if let Some(token) = bearer.filter(|_| origin == first) {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Empty::new())
                .map_err(|_| RegistryError::BadUrl {
                    url: uri.to_string(),
                })?;
            let (response, lease) = self.connections.send(&origin, request).await?;
            if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED
            {
                return Ok((uri.to_string(), response, lease));
            }
            let redirect = |reason| RegistryError::Redirect {
                url: uri.to_string(),
                reason,
            };
            let location = response
                .headers()
                .get(header::LOCATION)
                .ok_or_else(|| redirect("no Location"))?;
            let next = resolve(&uri, location).ok_or_else(|| redirect("unusable Location"))?;
            drain(response, lease, &self.connections).await;
            uri = next;
        }
        Err(RegistryError::Redirect {
            url: uri.to_string(),
            reason: "too many redirects",
        })
    }

    /// Where `uri` points, if we may go there.
    fn origin(&self, uri: &Uri) -> Result<Origin, RegistryError> {
        let bad = || RegistryError::BadUrl {
            url: uri.to_string(),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.is_insecure(authority.as_str()) => false,
            Some("http") => {
                return Err(RegistryError::Insecure {
                    url: uri.to_string(),
                    authority: authority.to_string(),
                });
            }
            _ => return Err(bad()),
        };
        Ok(Origin {
            https,
            authority: authority.to_string(),
        })
    }
}

fn parse_url(url: &str) -> Result<Uri, RegistryError> {
    url.parse()
        .map_err(|_| RegistryError::BadUrl { url: url.into() })
}

/// The absolute URL a `Location` names: absolute, or a path on `base`'s origin.
fn resolve(base: &Uri, location: &HeaderValue) -> Option<Uri> {
    let location = location.to_str().ok()?;
    let uri: Uri = location.parse().ok()?;
    if uri.scheme().is_some() {
        return Some(uri);
    }
    // Only absolute paths: registries and storage never send
    // relative-path redirects, and "//host/..." is not a path.
    if !location.starts_with('/') || location.starts_with("//") {
        return None;
    }
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(location)
        .build()
        .ok()
}

/// `response` if it is a success; otherwise its status and message as an error.
async fn check_status(
    url: String,
    response: Response<Incoming>,
    lease: Lease,
) -> Result<(String, Response<Incoming>, Lease), RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok((url, response, lease));
    }
    // The body names the registry's reason (`{"errors":[...]}`); its start is enough.
    let message = match read_limited(response, &lease, &url, MAX_ERROR_BODY).await {
        Ok(body) => String::from_utf8_lossy(&body).trim().to_string(),
        Err(_) => String::new(),
    };
    Err(RegistryError::Status {
        url,
        status,
        message,
    })
}

/// Reads a whole body of at most `limit` bytes.
async fn read_limited(
    response: Response<Incoming>,
    lease: &Lease,
    url: &str,
    limit: usize,
) -> Result<Bytes, RegistryError> {
    let collect = Limited::new(response.into_body(), limit).collect();
    let collected = tokio::time::timeout(READ_TIMEOUT, collect)
        .await
        .map_err(|_| RegistryError::TimedOut {
            authority: lease.authority().to_string(),
            after: READ_TIMEOUT,
        })?;
    match collected {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(source) => Err(RegistryError::Http {
                authority: lease.authority().to_string(),
                source: *source,
            }),
            // The only other error `Limited` gives is its length limit.
            Err(_) => Err(RegistryError::TooLarge {
                url: url.to_string(),
                limit: limit as u64,
            }),
        },
    }
}

/// Reads away a small body (a redirect's or a 401's) so its connection can
/// serve the next request; one that is large or slow is closed instead.
async fn drain(response: Response<Incoming>, lease: Lease, connections: &Connections) {
    let body = Limited::new(response.into_body(), MAX_ERROR_BODY).collect();
    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), body).await {
        connections.release(lease);
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
