use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

type Routes = Arc<HashMap<String, (String, Vec<u8>)>>;

/// A registry on loopback that serves fixed paths over plain HTTP and
/// records what was asked.
async fn fake_registry(
    routes: HashMap<String, (String, Vec<u8>)>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let routes: Routes = Arc::new(routes);
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (routes, seen) = (routes.clone(), seen.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                seen.lock().unwrap().push(path.clone());
                let (status, ctype, body) = match routes.get(&path) {
                    Some((ctype, body)) => ("200 OK", ctype.clone(), body.clone()),
                    None if path == "/v2/" => ("200 OK", "application/json".into(), b"{}".to_vec()),
                    None => (
                        "404 Not Found",
                        "application/json".into(),
                        br#"{"errors":[]}"#.to_vec(),
                    ),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    (addr, log)
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An index (arm64 + amd64) → manifest → config + layers, as routes.
fn image_routes(
    layers: &[&[u8]],
    served_layers: &[&[u8]],
) -> (HashMap<String, (String, Vec<u8>)>, String) {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/hello"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|l| descriptor(LAYER, l)).collect::<Vec<_>>()
    }))
    .unwrap();
    let mut amd64 = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    amd64["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm64 = descriptor("application/vnd.oci.image.manifest.v1+json", b"nope");
    arm64["platform"] = json!({"os": "linux", "architecture": "arm64"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm64, amd64]
    }))
    .unwrap();
    let mut routes = HashMap::new();
    let index_type = "application/vnd.oci.image.index.v1+json".to_string();
    routes.insert(
        "/v2/hello/manifests/latest".into(),
        (index_type.clone(), index.clone()),
    );
    routes.insert(
        format!("/v2/hello/manifests/{}", sha256_digest(&index)),
        (index_type, index.clone()),
    );
    routes.insert(
        format!("/v2/hello/manifests/{}", sha256_digest(&manifest)),
        (
            "application/vnd.oci.image.manifest.v1+json".into(),
            manifest,
        ),
    );
    routes.insert(
        format!("/v2/hello/blobs/{}", sha256_digest(&config)),
        ("application/octet-stream".into(), config),
    );
    for (layer, served) in layers.iter().zip(served_layers) {
        routes.insert(
            format!("/v2/hello/blobs/{}", sha256_digest(layer)),
            ("application/octet-stream".into(), served.to_vec()),
        );
    }
    (routes, sha256_digest(&index))
}

fn puller(images: &Path, registry: &str) -> Puller {
    let alias = RegistryAlias {
        from: "127.0.0.1:5000".into(),
        to: registry.into(),
    };
    Puller::new(images, vec![alias], vec![registry.into()])
}

#[tokio::test]
async fn pulls_through_an_alias_picks_amd64_and_caches_blobs() {
    let (routes, index_digest) =
        image_routes(&[b"layer-one", b"layer-two"], &[b"layer-one", b"layer-two"]);
    let (registry, log) = fake_registry(routes).await;
    let tmp = tempfile::tempdir().unwrap();
    let puller = puller(tmp.path(), &registry);
    let lines = Mutex::new(Vec::new());
    let progress = |line: String| lines.lock().unwrap().push(line);
    let pulled = puller
        .pull("web", "127.0.0.1:5000/hello:latest", |_| false, &progress)
        .await
        .unwrap();
    assert_eq!(pulled.digest, index_digest);
    assert_eq!(pulled.layers.len(), 2);
    assert_eq!(std::fs::read(&pulled.layers[1]).unwrap(), b"layer-two");
    assert_eq!(
        pulled
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap(),
        &["/bin/hello"]
    );
    assert!(
        lines
            .lock()
            .unwrap()
            .contains(&"web: layer 2/2 (9 B)".to_string()),
        "{lines:?}"
    );

    // Second boot: only the tag is asked again; blobs come from the cache.
    log.lock().unwrap().clear();
    puller
        .pull("web", "127.0.0.1:5000/hello:latest", |_| false, &progress)
        .await
        .unwrap();
    let asked = log.lock().unwrap().clone();
    assert!(asked.iter().all(|p| !p.contains("/blobs/")), "{asked:?}");
    // Pinned by digest and cached: no request at all, and no layers once unpacked.
    log.lock().unwrap().clear();
    let pinned = format!("127.0.0.1:5000/hello@{index_digest}");
    let again = puller
        .pull("web", &pinned, |_| true, &progress)
        .await
        .unwrap();
    assert!(again.layers.is_empty());
    let asked = log.lock().unwrap().clone();
    assert!(asked.iter().all(|p| p == "/v2/"), "{asked:?}");
}

#[tokio::test]
async fn refuses_a_corrupted_layer_and_keeps_nothing() {
    let (routes, _) = image_routes(&[b"good-bytes"], &[b"evil-bytes"]);
    let (registry, _) = fake_registry(routes).await;
    let tmp = tempfile::tempdir().unwrap();
    let err = puller(tmp.path(), &registry)
        .pull("web", "127.0.0.1:5000/hello:latest", |_| false, &|_| {})
        .await
        .unwrap_err();
    match err {
        ContainerError::DigestMismatch {
            what,
            expected,
            actual,
            ..
        } => {
            assert_eq!(what, "layer 1/1");
            assert_eq!(expected, sha256_digest(b"good-bytes"));
            assert_eq!(actual, sha256_digest(b"evil-bytes"));
        }
        other => panic!("{other:?}"),
    }
    let cached: Vec<_> = std::fs::read_dir(tmp.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(!cached.contains(&std::ffi::OsString::from(
        sha256_hex(&sha256_digest(b"good-bytes")).unwrap()
    )));
    assert!(
        cached
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".tmp")),
        "{cached:?}"
    );
}

#[tokio::test]
async fn refuses_a_manifest_that_does_not_match_the_pinned_digest() {
    let (routes, _) = image_routes(&[b"l"], &[b"l"]);
    let (registry, _) = fake_registry(routes.clone()).await;
    // Serve the index under a digest it does not have.
    let wrong = sha256_digest(b"something else");
    let mut routes = routes;
    let index = routes["/v2/hello/manifests/latest"].clone();
    routes.insert(format!("/v2/hello/manifests/{wrong}"), index);
    let (registry2, _) = fake_registry(routes).await;
    drop(registry);
    let tmp = tempfile::tempdir().unwrap();
    let err = puller(tmp.path(), &registry2)
        .pull(
            "web",
            &format!("127.0.0.1:5000/hello@{wrong}"),
            |_| false,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ContainerError::DigestMismatch { ref what, .. } if what == "manifest"),
        "{err:?}"
    );
}

#[test]
fn digests_and_sizes() {
    let digest = sha256_digest(b"x");
    assert!(sha256_hex(&digest).is_some());
    assert!(sha256_hex("sha256:../../etc/passwd").is_none());
    assert!(sha256_hex("sha512:00").is_none());
    assert_eq!(human_size(9), "9 B");
    assert_eq!(human_size(1_258_291), "1.2 MiB");
    let tmp = tempfile::tempdir().unwrap();
    let mut blob = BlobWriter::create(tmp.path(), sha256_hex(&digest).unwrap()).unwrap();
    blob.write(b"y").unwrap();
    assert_eq!(
        blob.finish(&digest).unwrap_err().unwrap(),
        sha256_digest(b"y")
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
