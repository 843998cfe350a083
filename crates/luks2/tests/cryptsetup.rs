//! Compatibility with the real `cryptsetup` (Debian's `cryptsetup-bin`), on
//! sparse regular files (no device-mapper needed): cryptsetup reads and opens
//! what we format, we open what upstream dstack's `cryptsetup luksFormat`
//! writes, and we refuse cryptsetup's default (argon2id) layout by name.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dstack_luks2::{Luks2Error, Volume};
use rand_core::OsRng;
use sha2::{Digest, Sha256};

/// The passphrase upstream dstack feeds cryptsetup: the lowercase hex of the
/// 32-byte disk key, with no newline.
const PASS: &str = "4f1c9a07d2b35e68a0c47f19be2d8036e57a4c91d0b6f823a59e17c40d3b62fa";
const DISK_SIZE: u64 = 24 * 1024 * 1024;
const HDR: usize = 16384;

fn cryptsetup() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("cryptsetup"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "cryptsetup is not in PATH: install Debian's cryptsetup-bin package \
                 (scripts/install-deps does)"
            )
        })
}

/// Runs cryptsetup with `args`, `stdin` piped in.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(cryptsetup())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning cryptsetup");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn run_ok(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A sparse zero-filled disk image.
    fn disk(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        File::create(&path).unwrap().set_len(DISK_SIZE).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn file(&self, name: &str, content: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// The volume key `cryptsetup luksDump --dump-volume-key` prints.
fn cryptsetup_volume_key(disk: &str, key_file: &str) -> Vec<u8> {
    let out = run_ok(
        &[
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
            key_file,
            disk,
        ],
        b"",
    );
    let dump = out
        .split_once("MK dump:")
        .unwrap_or_else(|| panic!("no MK dump in {out}"))
        .1;
    dump.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

fn format_ours(disk: &str) -> Volume {
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let volume = dstack_luks2::format(&mut dev, PASS.as_bytes(), &mut OsRng).unwrap();
    dev.sync_all().unwrap();
    volume
}

fn open_ours(disk: &str, pass: &[u8]) -> Result<Volume, Luks2Error> {
    dstack_luks2::open(&mut File::open(disk).unwrap(), pass)
}

/// Upstream dstack's `luks_setup` command line. `--sector-size 512` is what
/// cryptsetup picks by itself on upstream's virtio disk (512-byte logical and
/// physical sectors); on a regular file it would pick the filesystem's 4096
/// (see `a_regular_files_4k_sectors_are_refused`).
fn format_upstream(disk: &str, extra: &[&str]) {
    let mut args = vec![
        "luksFormat",
        "--type",
        "luks2",
        "--offset",
        "32768",
        "--cipher",
        "aes-xts-plain64",
        "--pbkdf",
        "pbkdf2",
        "--sector-size",
        "512",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-d-", disk]);
    run_ok(&args, PASS.as_bytes());
}

/// The JSON text of copy `index` of a header on `disk`.
fn json_text(disk: &str, index: usize) -> String {
    let img = std::fs::read(disk).unwrap();
    let area = &img[index * HDR + 4096..(index + 1) * HDR];
    let end = area.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(area[..end].to_vec()).unwrap()
}

/// Replaces `from` with `to` (same length) in both copies' JSON and
/// recomputes their checksums, as a host with raw disk access could.
fn tamper(disk: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut img = std::fs::read(disk).unwrap();
    for index in 0..2 {
        let copy = &mut img[index * HDR..(index + 1) * HDR];
        let at = copy
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("{from} not in the header"));
        copy[at..at + to.len()].copy_from_slice(to.as_bytes());
        let mut zeroed = copy.to_vec();
        zeroed[448..512].fill(0);
        copy[448..480].copy_from_slice(&Sha256::digest(&zeroed));
    }
    std::fs::write(disk, img).unwrap();
}

#[test]
fn cryptsetup_reads_and_opens_what_we_format() {
    let scratch = Scratch::new();
    let disk = scratch.disk("ours.img");
    let pass = scratch.file("pass", PASS.as_bytes());
    let wrong = scratch.file(
        "wrong",
        b"0000000000000000000000000000000000000000000000000000000000000000",
    );
    let volume = format_ours(&disk);

    run_ok(&["isLuks", "--type", "luks2", &disk], b"");
    let dump = run_ok(&["luksDump", &disk], b"");
    for needle in [
        "Version:       \t2",
        "offset: 16777216 [bytes]",
        "cipher: aes-xts-plain64",
        "sector: 512 [bytes]",
        "PBKDF:      pbkdf2",
        "Iterations: 1000",
        "AF stripes: 4000",
        "Area offset:32768 [bytes]",
        "Area length:258048 [bytes]",
        "Keyslots area: \t16744448 [bytes]",
        "Metadata area: \t16384 [bytes]",
    ] {
        assert!(dump.contains(needle), "{needle:?} not in:\n{dump}");
    }
    assert!(dump.contains(volume.uuid()), "{dump}");
    assert_eq!(run_ok(&["luksUUID", &disk], b"").trim(), volume.uuid());

    assert_eq!(cryptsetup_volume_key(&disk, &pass), volume.key());

    run_ok(
        &["open", "--test-passphrase", "--key-file", &pass, &disk],
        b"",
    );
    let out = run(
        &["open", "--test-passphrase", "--key-file", &wrong, &disk],
        b"",
    );
    assert!(
        !out.status.success(),
        "a wrong passphrase opened the volume"
    );
    // The passphrase on stdin, as upstream's `luksOpen -d-` gives it.
    run_ok(
        &["open", "--test-passphrase", "-d-", &disk],
        PASS.as_bytes(),
    );

    // cryptsetup left our header as it was, and we still open it.
    assert_eq!(
        open_ours(&disk, PASS.as_bytes()).unwrap().key(),
        volume.key()
    );
}

#[test]
fn we_open_what_upstreams_luks_format_writes() {
    let scratch = Scratch::new();
    let disk = scratch.disk("upstream.img");
    let pass = scratch.file("pass", PASS.as_bytes());
    // Exactly upstream's arguments: cryptsetup benchmarks the iterations.
    format_upstream(&disk, &[]);
    let before = std::fs::read(&disk).unwrap();

    dstack_luks2::validate(&mut File::open(&disk).unwrap()).unwrap();
    let volume = open_ours(&disk, PASS.as_bytes()).unwrap();
    assert_eq!(volume.key().to_vec(), cryptsetup_volume_key(&disk, &pass));
    assert_eq!(volume.uuid(), run_ok(&["luksUUID", &disk], b"").trim());
    assert_eq!(volume.segment().offset, 16_777_216);
    assert!(matches!(
        open_ours(&disk, b"wrong"),
        Err(Luks2Error::WrongPassphrase)
    ));
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "open wrote to the disk"
    );
}

/// With cryptsetup's iterations pinned to ours, its JSON and ours are the
/// same text once the random salts and digest are masked.
#[test]
fn our_json_is_cryptsetups_byte_for_byte() {
    let scratch = Scratch::new();
    let theirs = scratch.disk("theirs.img");
    format_upstream(&theirs, &["--pbkdf-force-iterations", "1000"]);
    let ours = scratch.disk("ours.img");
    format_ours(&ours);
    let theirs_json = json_text(&theirs, 0);
    assert_eq!(theirs_json, json_text(&theirs, 1));
    assert_eq!(mask(&json_text(&ours, 0)), mask(&theirs_json));
    assert_eq!(json_text(&ours, 0), json_text(&ours, 1));
}

/// `text` with the value of every `"salt"` and `"digest"` string replaced by
/// `*`.
fn mask(text: &str) -> String {
    let mut out = text.to_owned();
    for key in ["\"salt\":\"", "\"digest\":\""] {
        let mut masked = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            let start = at + key.len();
            let end = start + rest[start..].find('"').unwrap();
            masked.push_str(&rest[..start]);
            masked.push('*');
            rest = &rest[end..];
        }
        masked.push_str(rest);
        out = masked;
    }
    out
}

#[test]
fn cryptsetups_default_argon2id_layout_is_refused_by_name() {
    let scratch = Scratch::new();
    let disk = scratch.disk("default.img");
    run_ok(
        &["luksFormat", "--type", "luks2", "-d-", &disk],
        PASS.as_bytes(),
    );
    let before = std::fs::read(&disk).unwrap();
    let err = open_ours(&disk, PASS.as_bytes()).unwrap_err();
    match &err {
        Luks2Error::Unsupported { what, found, .. } => {
            assert_eq!(what, "keyslots.0.kdf.type", "{err}");
            assert_eq!(found, "\"argon2id\"", "{err}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(std::fs::read(&disk).unwrap(), before);
    // It is still a LUKS disk: the guest must not reformat it.
    assert!(dstack_luks2::probe(&mut File::open(&disk).unwrap()).unwrap());
}

#[test]
fn a_regular_files_4k_sectors_are_refused() {
    let scratch = Scratch::new();
    let disk = scratch.disk("4k.img");
    // Upstream's arguments without a sector size: on a regular file
    // cryptsetup picks the filesystem block size (4096), not 512.
    run_ok(
        &[
            "luksFormat",
            "--type",
            "luks2",
            "--offset",
            "32768",
            "--cipher",
            "aes-xts-plain64",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "-d-",
            &disk,
        ],
        PASS.as_bytes(),
    );
    let dump = run_ok(&["luksDump", &disk], b"");
    if dump.contains("sector: 512 [bytes]") {
        // A filesystem with 512-byte blocks: nothing to refuse here.
        open_ours(&disk, PASS.as_bytes()).unwrap();
        return;
    }
    match open_ours(&disk, PASS.as_bytes()).unwrap_err() {
        Luks2Error::Unsupported { what, .. } => assert_eq!(what, "segments.0.sector_size"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// Upstream's two attacks, made from a cryptsetup-written header: a null
/// cipher for the keyslot, and a keyslot area redirected into the header.
#[test]
fn tampered_cryptsetup_headers_are_refused() {
    let scratch = Scratch::new();
    let cases = [
        (
            r#""encryption":"aes-xts-plain64","key_size""#,
            r#""encryption":"cipher_null-ecb","key_size""#,
            "keyslots.0.area.encryption",
        ),
        (
            r#""offset":"32768""#,
            r#""offset":"00768""#,
            "keyslots.0.area",
        ),
        (
            r#""encryption":"aes-xts-plain64","sector_size""#,
            r#""encryption":"cipher_null-ecb","sector_size""#,
            "segments.0.encryption",
        ),
    ];
    for (i, (from, to, field)) in cases.into_iter().enumerate() {
        let disk = scratch.disk(&format!("tampered{i}.img"));
        format_upstream(&disk, &["--pbkdf-force-iterations", "1000"]);
        open_ours(&disk, PASS.as_bytes()).unwrap();
        tamper(Path::new(&disk), from, to);
        match open_ours(&disk, PASS.as_bytes()).unwrap_err() {
            Luks2Error::Unsupported { what, .. } => assert_eq!(what, field),
            other => panic!("{field}: expected Unsupported, got {other:?}"),
        }
    }
}
