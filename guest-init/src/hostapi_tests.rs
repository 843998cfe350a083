//! The host client against a hand-written HTTP/1.1 server on a unix socket,
//! so what goes over the wire is checked byte by byte, not by hyper itself.

use std::path::Path;

use dstack_proto::host::{LogEntry, LogStream, Notification, events};
use tokio::net::UnixListener;

use super::*;
use crate::testutil::{bundle, serve};

fn client(path: &Path) -> HostClient {
    HostClient::new(HostEndpoint::Unix(path.to_owned()), Duration::from_secs(2))
}

#[tokio::test]
async fn gets_the_config_bundle_on_a_closed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let mut seen = serve(&sock, "200 OK", serde_json::to_string(&bundle()).unwrap());
    let got = client(&sock)
        .get_config(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got, bundle());
    let req = seen.recv().await.unwrap();
    assert_eq!(req.request_line, "GET /v1/config HTTP/1.1");
    assert_eq!(req.header("connection"), Some("close"));
    assert!(req.header("host").is_some());
    assert!(req.body.is_empty());
}

#[tokio::test]
async fn posts_json_with_an_exact_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let mut seen = serve(&sock, "204 No Content", String::new());
    let n = Notification {
        event: events::BOOT_PROGRESS.into(),
        payload: "pulling images".into(),
    };
    client(&sock).notify(&n).await.unwrap();
    let req = seen.recv().await.unwrap();
    assert_eq!(req.request_line, "POST /v1/notify HTTP/1.1");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.header("content-length").unwrap(),
        req.body.len().to_string()
    );
    let back: Notification = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(back, n);

    let batch = LogBatch {
        entries: vec![LogEntry {
            ts_ms: 1,
            service: "web".into(),
            stream: LogStream::Stdout,
            line: "hello".into(),
        }],
    };
    client(&sock).post_logs(&batch).await.unwrap();
    let req = seen.recv().await.unwrap();
    assert_eq!(req.request_line, "POST /v1/logs HTTP/1.1");
    assert_eq!(
        serde_json::from_slice::<LogBatch>(&req.body).unwrap(),
        batch
    );
}

#[tokio::test]
async fn an_error_status_carries_the_hosts_message() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let _seen = serve(&sock, "404 Not Found", r#"{"error":"no such vm"}"#.into());
    let err = client(&sock)
        .get_config(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HostApiError::Status { status: 404, message, .. } if message == "no such vm"),
        "{err:?}"
    );
}

#[tokio::test]
async fn waits_for_the_host_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let late = sock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _seen = serve(&late, "200 OK", serde_json::to_string(&bundle()).unwrap());
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let got = client(&sock)
        .get_config(Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(got.sys_config.vm_name, "hello");

    let missing = dir.path().join("never.sock");
    let err = client(&missing)
        .get_config(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, HostApiError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn a_silent_host_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let quick = HostClient::new(HostEndpoint::Unix(sock), Duration::from_millis(200));
    let n = Notification {
        event: "x".into(),
        payload: String::new(),
    };
    let err = quick.notify(&n).await;
    assert!(matches!(err, Err(HostApiError::Timeout { .. })));
}

#[tokio::test]
async fn asks_for_the_sealing_key_with_the_quote_in_hex() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let answer = r#"{"encrypted_key":"0102","provider_quote":"03","provider_collateral":"{}"}"#;
    let mut seen = serve(&sock, "200 OK", answer.into());
    let got = client(&sock)
        .get_sealing_key(&GetSealingKeyRequest {
            quote: vec![0xab, 0xcd],
        })
        .await
        .unwrap();
    assert_eq!(got.encrypted_key, [1, 2]);
    assert_eq!(got.provider_quote, [3]);
    let req = seen.recv().await.unwrap();
    assert_eq!(
        req.request_line,
        format!("POST {SEALING_KEY_PATH} HTTP/1.1")
    );
    assert_eq!(req.body, br#"{"quote":"abcd"}"#);
}
