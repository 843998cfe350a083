//! The API listeners: a unix socket (mode 0600) and, optionally, TCP with a
//! bearer token.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::Router;
use tokio::net::{TcpListener, UnixListener, UnixStream};

use super::auth::{Token, require_token};

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Another process answers on the socket (another supervisor?).
    #[error("{} is in use by a running process", .0.display())]
    InUse(std::path::PathBuf),
    /// Binding failed.
    #[error("cannot listen on {0}")]
    Bind(String, #[source] io::Error),
}

/// Binds the API unix socket with mode 0600. A socket file nobody answers
/// on is stale (a crashed supervisor) and is replaced; a live one is not.
pub async fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let bind_err = |e| ListenError::Bind(path.display().to_string(), e);
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ListenError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    // The process umask (0077, set by main before anything is created) makes
    // the socket private from the moment it exists; chmod states it exactly.
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Binds the TCP listener.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ListenError::Bind(addr.to_string(), e))
}

/// Serves `app` on the unix socket until the future is dropped.
pub async fn serve_unix(listener: UnixListener, app: Router) -> io::Result<()> {
    axum::serve(listener, app).await
}

/// Serves `app` on TCP, every request checked against `token`.
pub async fn serve_tcp(listener: TcpListener, app: Router, token: Token) -> io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(token, require_token));
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.sock");
        let listener = bind_unix(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind_unix(&path).await, Err(ListenError::InUse(_))));
        drop(listener);
        // Stale now: replaced.
        bind_unix(&path).await.unwrap();
    }
}
