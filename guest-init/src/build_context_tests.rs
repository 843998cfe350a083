//! Unpacking shipped build contexts: what a packed context holds comes
//! back exactly, anything a packer never writes is refused, and a context
//! whose hash is not the measured one never reaches the engine.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::hostapi::HostEndpoint;
use crate::testutil::serve;

/// A tar entry written byte for byte (the tar crate's own builder refuses
/// the paths these tests need).
fn raw(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    mode: u32,
    link: &str,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn tar(entries: &[(&str, EntryType, u32, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, mode, link, data) in entries {
        raw(&mut builder, name, *kind, *mode, link, data);
    }
    builder.into_inner().unwrap()
}

/// A context as `dstack vm deploy` packs one: sorted, parents first.
fn good() -> Vec<u8> {
    tar(&[
        (
            "Dockerfile",
            EntryType::Regular,
            0o644,
            "",
            b"FROM x\nCOPY . /app\n",
        ),
        (
            "app.mjs",
            EntryType::Regular,
            0o644,
            "",
            b"console.log(1)\n",
        ),
        ("bin", EntryType::Directory, 0o755, "", b""),
        ("bin/run", EntryType::Regular, 0o755, "", b"#!/bin/sh\n"),
        ("current", EntryType::Symlink, 0o777, "bin/run", b""),
        ("bin/up", EntryType::Symlink, 0o777, "../app.mjs", b""),
    ])
}

#[test]
fn a_packed_context_comes_back_exactly_with_every_mtime_zero() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("context");
    assert_eq!(unpack(&good()[..], &root).unwrap(), 6);
    assert_eq!(
        fs::read_to_string(root.join("Dockerfile")).unwrap(),
        "FROM x\nCOPY . /app\n"
    );
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("app.mjs"), 0o644);
    assert_eq!(mode("bin/run"), 0o755);
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(
        fs::read_link(root.join("current")).unwrap(),
        Path::new("bin/run")
    );
    assert_eq!(
        fs::read_link(root.join("bin/up")).unwrap(),
        Path::new("../app.mjs")
    );
    // (Reading a file above may have moved its atime; no build looks at it.)
    for p in ["", "Dockerfile", "bin", "bin/run", "current"] {
        let meta = fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(meta.mtime(), 0, "{p:?}");
    }

    // Unpacked again (the next boot): the same tree, nothing stale left.
    fs::write(root.join("stale"), "from an older context").unwrap();
    unpack(&good()[..], &root).unwrap();
    assert!(!root.join("stale").exists());
    assert_eq!(
        fs::read_to_string(root.join("app.mjs")).unwrap(),
        "console.log(1)\n"
    );
}

#[test]
fn entries_no_packer_writes_are_refused_and_nothing_leaves_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            tar(&[("/etc/passwd", EntryType::Regular, 0o644, "", b"x")]),
            "absolute",
        ),
        (
            "dotdot",
            tar(&[("a/../../outside/x", EntryType::Regular, 0o644, "", b"x")]),
            "..",
        ),
        (
            "device",
            tar(&[("null", EntryType::Char, 0o666, "", b"")]),
            "device",
        ),
        (
            "block",
            tar(&[("sda", EntryType::Block, 0o666, "", b"")]),
            "device",
        ),
        (
            "fifo",
            tar(&[("pipe", EntryType::Fifo, 0o644, "", b"")]),
            "FIFO",
        ),
        (
            "hardlink",
            tar(&[("h", EntryType::Link, 0o644, "/etc/shadow", b"")]),
            "hard link",
        ),
        (
            "absolute link",
            tar(&[("l", EntryType::Symlink, 0o777, "/etc", b"")]),
            "points out",
        ),
        (
            "escaping link",
            tar(&[("a/l", EntryType::Symlink, 0o777, "../../outside", b"")]),
            "points out",
        ),
        (
            "write through a link",
            tar(&[
                ("l", EntryType::Symlink, 0o777, "sub", b""),
                ("sub", EntryType::Directory, 0o755, "", b""),
                ("l/x", EntryType::Regular, 0o644, "", b"x"),
            ]),
            "under a symlink",
        ),
        (
            "itself",
            tar(&[(".", EntryType::Directory, 0o755, "", b"")]),
            "itself",
        ),
    ];
    for (what, bytes, reason) in cases {
        let err = unpack(&bytes[..], &dir.path().join("context")).unwrap_err();
        assert!(
            matches!(&err, ContextError::Unsafe { .. }) && err.to_string().contains(reason),
            "{what}: {err}"
        );
    }
    // A second entry for a path (over a file, or over a link) is not
    // written through.
    let twice = tar(&[
        ("l", EntryType::Symlink, 0o777, "f", b""),
        ("l", EntryType::Regular, 0o644, "", b"x"),
    ]);
    let err = unpack(&twice[..], &dir.path().join("context")).unwrap_err();
    assert!(matches!(err, ContextError::Write { .. }), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // Set-id and sticky bits are not kept.
    let setuid = tar(&[("s", EntryType::Regular, 0o4755, "", b"x")]);
    unpack(&setuid[..], &dir.path().join("context")).unwrap();
    let mode = fs::metadata(dir.path().join("context/s")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755);
}

fn compose_with(sha256: &str) -> Compose {
    let contexts = BTreeMap::from([("web".to_string(), sha256.to_string())]);
    let text = dstack_compose::app_compose_with_build_contexts(
        "app",
        "services:\n  web:\n    build: .\n  db:\n    image: x\n",
        &contexts,
    )
    .unwrap();
    dstack_compose::AppCompose::parse(&text).unwrap().1
}

#[tokio::test]
async fn the_measured_context_is_fetched_checked_and_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let bytes = good();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    // The tar is ASCII and NULs: the test host serves it as text.
    let mut seen = serve(&sock, "200 OK", String::from_utf8(bytes.clone()).unwrap());
    let client = HostClient::new(HostEndpoint::Unix(sock), Duration::from_secs(5));
    let data = dir.path().join("data");
    let lines = std::sync::Mutex::new(Vec::new());
    let provided = provide_all(&client, &compose_with(&sha256), &data, &|line| {
        lines.lock().unwrap().push(line)
    })
    .await
    .unwrap();
    assert_eq!(
        provided,
        [Provided {
            service: "web".into(),
            sha256: sha256.clone(),
            bytes: bytes.len() as u64,
            entries: 6
        }]
    );
    let req = seen.recv().await.unwrap();
    assert_eq!(
        req.request_line,
        format!("GET /v1/blobs/sha256/{sha256} HTTP/1.1")
    );
    let context = context_dir(&data, "web");
    assert_eq!(
        context,
        data.join("volumes/dstack-engine/dstack-build/web/context")
    );
    assert!(context.join("Dockerfile").is_file());
    assert!(!work_dir(&data, "web").join("context.tar").exists());
    assert!(
        lines.lock().unwrap()[1].contains("6 entries"),
        "{:?}",
        lines.lock().unwrap()
    );
    assert_eq!(
        engine_context_dir("web"),
        "/var/lib/containers/dstack-build/web/context"
    );
}

#[tokio::test]
async fn a_context_the_compose_does_not_measure_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let measured = hex::encode(Sha256::digest(good()));
    // The host swaps in another context (a Dockerfile that does something else).
    let swapped = tar(&[("Dockerfile", EntryType::Regular, 0o644, "", b"FROM evil\n")]);
    let _seen = serve(&sock, "200 OK", String::from_utf8(swapped.clone()).unwrap());
    let client = HostClient::new(HostEndpoint::Unix(sock), Duration::from_secs(5));
    let data = dir.path().join("data");
    let err = provide_all(&client, &compose_with(&measured), &data, &|_| {})
        .await
        .unwrap_err();
    match &err {
        ContextError::Mismatch {
            service,
            expected,
            actual,
        } => {
            assert_eq!(service, "web");
            assert_eq!(expected, &measured);
            assert_eq!(actual, &hex::encode(Sha256::digest(&swapped)));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!context_dir(&data, "web").exists(), "nothing was unpacked");
    assert!(!work_dir(&data, "web").join("context.tar").exists());

    // A host that has no such blob: named, with its answer.
    let sock = dir.path().join("host2.sock");
    let _seen = serve(
        &sock,
        "404 Not Found",
        r#"{"error":"this VM was deployed with no blob"}"#.into(),
    );
    let client = HostClient::new(HostEndpoint::Unix(sock), Duration::from_secs(5));
    let err = provide_all(&client, &compose_with(&measured), &data, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ContextError::Fetch { .. }), "{err}");
    assert!(
        dstack_proto::error_chain(&err).contains("deployed with no blob"),
        "{}",
        dstack_proto::error_chain(&err)
    );
}
