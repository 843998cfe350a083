//! Packing build contexts: the same tree always gives the same bytes,
//! whatever its times, owners and permission noise; `.dockerignore` is
//! honoured; what cannot be shipped faithfully is refused by name.

use std::os::unix::fs::{MetadataExt, symlink};
use std::time::{Duration, SystemTime};

use super::*;

/// The tutorial's shape: a Dockerfile COPYing files beside it.
fn tree(root: &Path) {
    fs::create_dir_all(root.join("lib")).unwrap();
    fs::write(
        root.join("Dockerfile"),
        "FROM node\nCOPY package.json app.mjs ./\n",
    )
    .unwrap();
    fs::write(root.join("package.json"), "{\"name\":\"app\"}\n").unwrap();
    fs::write(root.join("app.mjs"), "console.log('hi')\n").unwrap();
    fs::write(root.join("lib/run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("lib/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("lib/run.sh", root.join("start")).unwrap();
}

fn pack(dir: &Path) -> Packed {
    pack_dir(dir, Some("Dockerfile"), MAX_BLOB_BYTES, &mut |_, _| {}).unwrap()
}

/// One tar entry's header, as read back.
#[derive(Debug)]
struct Entry {
    path: String,
    kind: char,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    user: String,
    link: String,
}

fn entries(tar: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            Entry {
                path: e.path().unwrap().display().to_string(),
                kind: match h.entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Regular => 'f',
                    other => panic!("{other:?}"),
                },
                mode: h.mode().unwrap(),
                owner: (h.uid().unwrap(), h.gid().unwrap()),
                mtime: h.mtime().unwrap(),
                user: h.username().unwrap().unwrap_or_default().to_owned(),
                link: e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn the_same_tree_packs_to_the_same_bytes_whatever_its_times_owners_and_modes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tree(a.path());
    tree(b.path());
    // b: other times, another owner, other permission bits of the same kind.
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for p in ["Dockerfile", "package.json", "lib/run.sh", "lib", ""] {
        set_mtime(&b.path().join(p), then);
    }
    fs::set_permissions(b.path().join("app.mjs"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(
        b.path().join("lib/run.sh"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    for p in ["app.mjs", "lib", "lib/run.sh"] {
        std::os::unix::fs::chown(b.path().join(p), Some(1234), Some(5678)).unwrap();
    }
    assert_eq!(fs::metadata(b.path().join("lib")).unwrap().uid(), 1234);

    let first = pack(a.path());
    assert_eq!(first, pack(a.path()), "packing twice gives the same bytes");
    let other = pack(b.path());
    assert!(
        first.tar == other.tar,
        "times, owners and modes do not leak in"
    );
    assert_eq!(first.sha256, other.sha256);
    assert_eq!(first.sha256, hex::encode(Sha256::digest(&first.tar)));
    assert_eq!(first.files, 4);

    let listed = entries(&first.tar);
    let names: Vec<&str> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "Dockerfile",
            "app.mjs",
            "lib",
            "lib/run.sh",
            "package.json",
            "start"
        ],
        "sorted by path"
    );
    for e in &listed {
        assert_eq!((e.owner, e.mtime), ((0, 0), 0), "{e:?}");
        assert!(e.user.is_empty(), "{e:?}: no user name");
        let expected = match (e.path.as_str(), e.kind) {
            (_, 'd') | ("lib/run.sh", _) => 0o755,
            (_, 'l') => 0o777,
            _ => 0o644,
        };
        assert_eq!(e.mode, expected, "{e:?}");
        if e.kind == 'l' {
            assert_eq!(e.link, "lib/run.sh", "a symlink is kept as one");
        }
    }
}

#[test]
fn long_paths_pack_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a".repeat(90)).join("b".repeat(90));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("c".repeat(60)), "x").unwrap();
    let packed = pack_dir(dir.path(), None, MAX_BLOB_BYTES, &mut |_, _| {}).unwrap();
    assert_eq!(
        packed,
        pack_dir(dir.path(), None, MAX_BLOB_BYTES, &mut |_, _| {}).unwrap()
    );
    let names: Vec<String> = entries(&packed.tar).into_iter().map(|e| e.path).collect();
    assert_eq!(names.len(), 3);
    assert!(names[2].ends_with(&"c".repeat(60)), "{names:?}");
}

#[test]
fn dockerignore_leaves_out_what_it_names_but_never_the_dockerfile() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tree(root);
    fs::create_dir_all(root.join("node_modules/pkg")).unwrap();
    fs::write(root.join("node_modules/pkg/index.js"), "x").unwrap();
    // Under an ignored directory, what would be refused is never looked at.
    symlink("/etc/passwd", root.join("node_modules/escape")).unwrap();
    fs::create_dir_all(root.join("docs/keep")).unwrap();
    fs::write(root.join("docs/a.md"), "a").unwrap();
    fs::write(root.join("docs/keep/b.md"), "b").unwrap();
    fs::write(root.join("secret.env"), "TOKEN=1").unwrap();
    fs::write(root.join("debug.log"), "").unwrap();
    fs::write(root.join("lib/trace.log"), "").unwrap();
    fs::write(
        root.join(".dockerignore"),
        "# not for the image\nnode_modules\n/secret.env\n**/*.log\ndocs\n!docs/keep/b.md\nDockerfile\n",
    )
    .unwrap();
    let packed = pack(root);
    let names: Vec<String> = entries(&packed.tar).into_iter().map(|e| e.path).collect();
    assert_eq!(
        names,
        [
            ".dockerignore",
            "Dockerfile",
            "app.mjs",
            "docs",
            "docs/keep",
            "docs/keep/b.md",
            "lib",
            "lib/run.sh",
            "package.json",
            "start"
        ]
    );
    // What is ignored does not change the hash.
    fs::write(root.join("secret.env"), "TOKEN=2").unwrap();
    assert_eq!(pack(root).sha256, packed.sha256);
    fs::write(root.join("app.mjs"), "console.log('changed')\n").unwrap();
    assert_ne!(pack(root).sha256, packed.sha256);

    let bad = tempfile::tempdir().unwrap();
    fs::write(bad.path().join(".dockerignore"), "ok\n!\n").unwrap();
    let err = pack_dir(bad.path(), None, MAX_BLOB_BYTES, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(err, ContextError::Dockerignore { .. }) && err.to_string().contains("line 2"),
        "{err}"
    );
}

#[test]
fn links_out_of_the_context_and_special_files_are_refused_by_name() {
    for (target, ok) in [
        ("/etc/passwd", false),
        ("../outside", false),
        ("lib/../../outside", false),
        ("lib/../app.mjs", true),
        ("missing-but-inside", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        fs::create_dir(&root).unwrap();
        tree(&root);
        symlink(target, root.join("link")).unwrap();
        let result = pack_dir(&root, Some("Dockerfile"), MAX_BLOB_BYTES, &mut |_, _| {});
        match result {
            Ok(_) => assert!(ok, "{target}"),
            Err(ContextError::SymlinkEscape { path, target: t }) => {
                assert!(!ok, "{target}");
                assert_eq!((path, t), (root.join("link"), PathBuf::from(target)));
            }
            Err(e) => panic!("{target}: {e}"),
        }
    }
    // A link in a subdirectory may climb as far as the context.
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    symlink("../app.mjs", dir.path().join("lib/up")).unwrap();
    pack(dir.path());

    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let err = pack_dir(dir.path(), None, MAX_BLOB_BYTES, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(err, ContextError::UnsupportedFile { kind: "socket", .. }),
        "{err}"
    );
    fs::write(dir.path().join(".dockerignore"), "*.sock\n").unwrap();
    pack_dir(dir.path(), None, MAX_BLOB_BYTES, &mut |_, _| {}).unwrap();
}

#[test]
fn a_context_over_the_limit_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    fs::write(dir.path().join("big.bin"), vec![7u8; 10_000]).unwrap();
    let mut seen = Vec::new();
    let err = pack_dir(dir.path(), None, 8192, &mut |done, all| {
        seen.push((done, all))
    })
    .unwrap_err();
    match &err {
        ContextError::TooLarge { at, limit, .. } => {
            assert_eq!(
                (at.as_path(), *limit),
                (dir.path().join("big.bin").as_path(), 8192)
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains(".dockerignore"), "{err}");
    fs::write(dir.path().join(".dockerignore"), "*.bin\n").unwrap();
    let mut seen = Vec::new();
    let packed = pack_dir(dir.path(), None, 8192, &mut |done, all| {
        seen.push((done, all))
    })
    .unwrap();
    // Progress counts file bytes up to the total.
    let total = packed.content_bytes;
    assert_eq!(seen.last(), Some(&(total, total)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn services_find_their_context_beside_the_compose_file() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    tree(&app.join("web"));
    fs::create_dir_all(app.join("api")).unwrap();
    let file = app.join("compose.yml");
    let yaml = "services:\n  web:\n    build: {context: ./web, dockerfile: Dockerfile, args: {SOURCE_DATE_EPOCH: \"0\"}}\n  api:\n    build: ./api\n  gone:\n    build: ./gone\n  inline:\n    build: {dockerfile_inline: FROM x}\n  plain:\n    image: x\n";
    fs::write(&file, yaml).unwrap();
    let compose = Compose::parse(yaml).unwrap();
    let mut progress = Vec::new();
    let packed = pack_services(&file, &compose, &BTreeSet::new(), &mut |s, _, _| {
        progress.push(s.to_owned())
    });
    let by: std::collections::BTreeMap<&str, &Result<ServiceContext, ContextError>> =
        packed.iter().map(|(s, r)| (s.as_str(), r)).collect();
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        ["api", "gone", "web"]
    );
    let web = by["web"].as_ref().unwrap();
    assert_eq!(web.dir, app.join("web").canonicalize().unwrap());
    assert_eq!(web.packed, pack(&app.join("web")));
    assert!(progress.iter().all(|s| s == "web"), "{progress:?}");
    match by["api"] {
        Err(ContextError::DockerfileMissing { service, path }) => {
            assert_eq!(
                (service.as_str(), path),
                ("api", &app.join("api/Dockerfile"))
            );
        }
        other => panic!("{other:?}"),
    }
    match by["gone"] {
        Err(e @ ContextError::ContextMissing { path, .. }) => {
            assert_eq!(path, &app.join("./gone"));
            assert!(
                e.to_string().starts_with("services.gone.build.context:"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // An inline Dockerfile ships a context only when the app-compose
    // measures one for it.
    let measured = BTreeSet::from(["inline".to_string()]);
    let packed = pack_services(&file, &compose, &measured, &mut |_, _, _| {});
    assert!(packed.iter().any(|(s, r)| s == "inline" && r.is_ok()));

    // Read from a pipe, the file has no directory to resolve from.
    for piped in ["/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"] {
        let packed = pack_services(
            Path::new(piped),
            &compose,
            &BTreeSet::new(),
            &mut |_, _, _| {},
        );
        assert!(
            packed
                .iter()
                .all(|(_, r)| matches!(r, Err(ContextError::NoDirectory { .. }))),
            "{piped}"
        );
        let text = packed[0].1.as_ref().unwrap_err().to_string();
        assert!(text.contains("pass the compose file by its path"), "{text}");
    }
}
