use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What the fake server saw: the request line's path and its headers.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
}

/// An answer: status line, extra headers, body.
type Answer = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// An HTTP/1.1 server on loopback that answers each request with
/// `handler`, keeps connections open, and records requests and how many
/// connections it accepted.
async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>, Arc<Mutex<usize>>) {
    serve_over(handler, None).await
}

/// [`serve`], over TLS when `tls` is given.
async fn serve_over(
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Arc<Mutex<Vec<Seen>>>, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(0));
    let (seen, count) = (log.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            let (handler, seen, tls) = (handler.clone(), seen.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => answer(conn, handler, seen).await,
                    Some(tls) => {
                        if let Ok(conn) = tls.accept(conn).await {
                            answer(conn, handler, seen).await;
                        }
                    }
                }
            });
        }
    });
    (addr, log, accepted)
}

/// Answers the requests on one connection until it closes.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 1024];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let mut lines = head.lines();
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default()
            .to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let request = Seen { path, headers };
        seen.lock().unwrap().push(request.clone());
        let (status, extra, body) = handler(&request);
        let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if conn.write_all(head.as_bytes()).await.is_err() || conn.write_all(&body).await.is_err() {
            return;
        }
    }
}

fn reference(registry: &str) -> Reference {
    Reference::with_tag(registry.into(), "hello".into(), "latest".into())
}

#[tokio::test]
async fn fetches_an_anonymous_token_once_and_reuses_the_connection() {
    let realm = Arc::new(Mutex::new(String::new()));
    let realm_in = realm.clone();
    let handler: Handler = Arc::new(move |seen: &Seen| {
        if seen.path.starts_with("/token?") {
            return ("200 OK", vec![], br#"{"token":"t0k"}"#.to_vec());
        }
        if seen.headers.get("authorization").map(String::as_str) != Some("Bearer t0k") {
            let challenge = format!(
                r#"Bearer realm="{}",service="fake",scope="repository:hello:pull""#,
                realm_in.lock().unwrap()
            );
            return (
                "401 Unauthorized",
                vec![("WWW-Authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
            );
        }
        ("200 OK", vec![], b"manifest-bytes".to_vec())
    });
    let (addr, log, accepted) = serve(handler).await;
    *realm.lock().unwrap() = format!("http://{addr}/token");
    let registry = Registry::new(vec![addr.clone()]);
    let reference = reference(&addr);
    for _ in 0..2 {
        let manifest = registry
            .manifest(&reference, &["a/b", "c/d"])
            .await
            .unwrap();
        assert_eq!(manifest, b"manifest-bytes");
    }
    let paths: Vec<_> = log.lock().unwrap().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v2/hello/manifests/latest",
            "/token?scope=repository%3Ahello%3Apull&service=fake",
            "/v2/hello/manifests/latest",
            "/v2/hello/manifests/latest",
        ]
    );
    assert_eq!(log.lock().unwrap()[0].headers["accept"], "a/b, c/d");
    // Drained 401s and read answers leave the one connection reusable.
    assert_eq!(*accepted.lock().unwrap(), 1);
}

#[tokio::test]
async fn follows_a_blob_redirect_without_the_token_and_bounds_the_size() {
    let (storage, storage_log, _) = serve(Arc::new(|_: &Seen| {
        ("200 OK", vec![], b"blob-bytes".to_vec())
    }))
    .await;
    let (auth, _, _) = serve(Arc::new(|_: &Seen| {
        ("200 OK", vec![], br#"{"access_token":"abc"}"#.to_vec())
    }))
    .await;
    let target = format!("http://{storage}/bucket/x?sig=1");
    let challenge = format!("Bearer realm=\"http://{auth}/token\"");
    let (addr, _, _) = serve(Arc::new(move |seen: &Seen| {
        if seen.headers.get("authorization").map(String::as_str) == Some("Bearer abc") {
            let location = ("Location", target.clone());
            ("307 Temporary Redirect", vec![location], Vec::new())
        } else {
            let challenge = ("WWW-Authenticate", challenge.clone());
            ("401 Unauthorized", vec![challenge], Vec::new())
        }
    }))
    .await;
    let registry = Registry::new(vec![addr.clone(), storage.clone(), auth.clone()]);

    let digest = "sha256:00";
    let mut blob = registry.blob(&reference(&addr), digest, 10).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = blob.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"blob-bytes");
    let seen = storage_log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/bucket/x?sig=1");
    assert!(!seen[0].headers.contains_key("authorization"), "{seen:?}");

    // One byte fewer than served: refused, not written past the size.
    let mut blob = registry.blob(&reference(&addr), digest, 9).await.unwrap();
    let err = loop {
        match blob.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("accepted an oversized blob"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, RegistryError::TooLarge { limit: 9, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_plain_http_to_unlisted_hosts_and_names_errors() {
    let (storage, storage_log, _) =
        serve(Arc::new(|_: &Seen| ("200 OK", vec![], b"x".to_vec()))).await;
    let target = format!("http://{storage}/x");
    let (addr, _, _) = serve(Arc::new(move |seen: &Seen| {
        if seen.path.contains("/blobs/") {
            ("302 Found", vec![("Location", target.clone())], Vec::new())
        } else {
            (
                "404 Not Found",
                vec![],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
            )
        }
    }))
    .await;
    // The storage host is not listed: the redirect to it over HTTP is refused.
    let registry = Registry::new(vec![addr.clone()]);
    let err = registry
        .blob(&reference(&addr), "sha256:00", 1)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, RegistryError::Insecure { authority, .. } if *authority == storage),
        "{err}"
    );
    assert!(storage_log.lock().unwrap().is_empty());
    let err = registry.manifest(&reference(&addr), &[]).await.unwrap_err();
    match err {
        RegistryError::Status {
            status, message, ..
        } => {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert!(message.contains("MANIFEST_UNKNOWN"), "{message}");
        }
        other => panic!("{other}"),
    }
    // A registry that wants Basic credentials: we have none.
    let (basic, _, _) = serve(Arc::new(|_: &Seen| {
        (
            "401 Unauthorized",
            vec![("WWW-Authenticate", "Basic realm=\"r\"".to_string())],
            Vec::new(),
        )
    }))
    .await;
    let err = Registry::new(vec![basic.clone()])
        .manifest(&reference(&basic), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}

#[test]
fn resolves_locations() {
    let base: Uri = "https://r.example:5000/v2/a/blobs/x".parse().unwrap();
    let value = |s: &'static str| HeaderValue::from_static(s);
    assert_eq!(
        resolve(&base, &value("/other?x=1")).unwrap().to_string(),
        "https://r.example:5000/other?x=1"
    );
    assert_eq!(
        resolve(&base, &value("https://s.example/b?sig=2"))
            .unwrap()
            .to_string(),
        "https://s.example/b?sig=2"
    );
    assert!(resolve(&base, &value("relative/path")).is_none());
    assert!(resolve(&base, &value("//s.example/b")).is_none());
}

#[tokio::test]
async fn speaks_https_trusting_only_the_bundle() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let handler: Handler = Arc::new(|_: &Seen| ("200 OK", vec![], b"over tls".to_vec()));
    let (addr, _, _) = serve_over(handler, Some(acceptor)).await;
    let port = addr.rsplit_once(':').unwrap().1;
    let registry_name = format!("localhost:{port}");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, cert.pem()).unwrap();

    let registry = Registry::new(Vec::new());
    registry.connections.trust_only(&bundle);
    let manifest = registry
        .manifest(&reference(&registry_name), &[])
        .await
        .unwrap();
    assert_eq!(manifest, b"over tls");

    // Another bundle does not vouch for the server: the handshake fails.
    let other = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(&bundle, other.pem()).unwrap();
    let registry = Registry::new(Vec::new());
    registry.connections.trust_only(&bundle);
    let err = registry
        .manifest(&reference(&registry_name), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err}");
}
