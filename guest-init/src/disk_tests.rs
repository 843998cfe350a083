//! Disk signature detection on temp files, and the prepare flow against the
//! recording syscall fake.

use std::cell::Cell;
use std::fs;
use std::io::Write;

use super::*;
use crate::sys::fake::{Call, RecordingSyscall};

/// Bytes to write at offsets.
type Patches<'a> = &'a [(u64, &'a [u8])];

/// A sparse disk image of `len` bytes with `patches` written at offsets.
fn image(dir: &Path, name: &str, len: u64, patches: &[(u64, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    file.set_len(len).unwrap();
    for (offset, bytes) in patches {
        file.seek(SeekFrom::Start(*offset)).unwrap();
        file.write_all(bytes).unwrap();
    }
    path
}

#[test]
fn detects_each_kind_of_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mb = 8 << 20;
    let cases: &[(&str, Patches, DiskContent)] = &[
        ("zero", &[], DiskContent::Empty),
        ("luks", &[(0, b"LUKS\xba\xbe\x00\x02")], DiskContent::Luks),
        // A primary header wiped but the LUKS2 secondary intact.
        ("luks2b", &[(0x4000, b"SKUL\xba\xbe")], DiskContent::Luks),
        ("luks2c", &[(0x40_0000, b"SKUL\xba\xbe")], DiskContent::Luks),
        ("ext4", &[(1080, &[0x53, 0xef])], DiskContent::Ext4),
        (
            "mbr",
            &[(446, &[0x80, 1, 1, 0]), (510, &[0x55, 0xaa])],
            DiskContent::Unrecognised("a partition table"),
        ),
        (
            "xfs",
            &[(0, b"XFSB")],
            DiskContent::Unrecognised("an XFS filesystem"),
        ),
        (
            "btrfs",
            &[(0x10040, b"_BHRfS_M")],
            DiskContent::Unrecognised("a btrfs filesystem"),
        ),
        (
            "junk",
            &[(4000, b"x")],
            DiskContent::Unrecognised("unrecognised data"),
        ),
    ];
    for (name, patches, want) in cases {
        let path = image(d, name, mb, patches);
        assert_eq!(&probe(&path).unwrap(), want, "{name}");
    }
    // A disk smaller than the probe window still classifies.
    let tiny = image(d, "tiny", 2048, &[(1080, &[0x53, 0xef])]);
    assert_eq!(probe(&tiny).unwrap(), DiskContent::Ext4);
}

fn mounts(sys: &RecordingSyscall) -> Vec<MountSpec> {
    sys.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Mount(m) => Some(m),
            _ => None,
        })
        .collect()
}

const DISK_LEN: u64 = 24 << 20;
const KEY: &[u8] = b"0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

fn params(passphrase: &[u8], format_nonempty: bool) -> DiskParams<'_> {
    DiskParams {
        passphrase,
        format_nonempty,
        ephemeral_key: false,
    }
}

/// "mkfs" for tests: stamps the ext4 magic on the plaintext stand-in.
fn stamp_ext4(count: &Cell<u32>) -> impl Fn(&Path) -> Result<(), DiskError> + '_ {
    move |plain: &Path| {
        count.set(count.get() + 1);
        let mut file = fs::OpenOptions::new().write(true).open(plain).unwrap();
        file.seek(SeekFrom::Start(1080)).unwrap();
        file.write_all(&[0x53, 0xef]).unwrap();
        Ok(())
    }
}

fn never(_: &Path) -> Result<(), DiskError> {
    panic!("must not format")
}

#[test]
fn an_empty_disk_gets_a_luks2_header_then_ext4_inside_then_is_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", DISK_LEN, &[]);
    let plain = image(dir.path(), "plain", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&plain);
    let sys = RecordingSyscall::default();
    let formatted = Cell::new(0);
    let (outcome, device) = prepare(
        &sys,
        &mapper,
        &disk,
        Path::new("/data"),
        &params(KEY, false),
        &stamp_ext4(&formatted),
    )
    .unwrap();
    assert_eq!(outcome, DiskOutcome::Formatted);
    assert_eq!(outcome.state(), "formatted");
    assert_eq!((formatted.get(), device.as_path()), (1, plain.as_path()));
    // The header is real LUKS2 and opens with the passphrase to the key that was mapped.
    assert_eq!(probe(&disk).unwrap(), DiskContent::Luks);
    let volume = dstack_luks2::open(&mut File::open(&disk).unwrap(), KEY).unwrap();
    assert_eq!(mapper.keys.lock().unwrap()[0], volume.key());
    let m = mounts(&sys);
    assert_eq!(m.len(), 1);
    assert_eq!(
        (
            m[0].source.as_str(),
            m[0].target.as_str(),
            m[0].fstype.as_str()
        ),
        (plain.to_str().unwrap(), "/data", "ext4")
    );
    assert!(m[0].flags.contains(MsFlags::MS_NOATIME));
    let calls = sys.calls();
    for sub in ["/data/volumes", "/data/images", "/data/containers"] {
        assert!(calls.contains(&Call::Mkdir(sub.into())), "{sub}");
    }

    // The next boot opens the same volume and formats nothing.
    let sys = RecordingSyscall::default();
    let (outcome, _) = prepare(
        &sys,
        &mapper,
        &disk,
        Path::new("/data"),
        &params(KEY, false),
        &never,
    )
    .unwrap();
    assert_eq!(outcome, DiskOutcome::Opened);
    let keys = mapper.keys.lock().unwrap();
    assert_eq!(keys[0], keys[1]);
    assert_eq!(mounts(&sys).len(), 1);
}

#[test]
fn another_apps_disk_is_refused_and_left_byte_for_byte_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", DISK_LEN, &[]);
    let plain = image(dir.path(), "plain", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&plain);
    let formatted = Cell::new(0);
    let sys = RecordingSyscall::default();
    let format = stamp_ext4(&formatted);
    prepare(
        &sys,
        &mapper,
        &disk,
        Path::new("/d"),
        &params(KEY, false),
        &format,
    )
    .unwrap();
    let before = fs::read(&disk).unwrap();
    for allow in [false, true] {
        let sys = RecordingSyscall::default();
        let other = b"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let err = prepare(
            &sys,
            &mapper,
            &disk,
            Path::new("/d"),
            &params(other, allow),
            &never,
        )
        .unwrap_err();
        assert!(matches!(err, DiskError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("another key"), "{err}");
        assert!(sys.calls().is_empty(), "nothing mounted or created");
        assert!(fs::read(&disk).unwrap() == before, "the disk changed");
    }
    assert_eq!(mapper.keys.lock().unwrap().len(), 1, "never mapped");
    // Under the `none` provider the refusal says why the key changed.
    let ephemeral = DiskParams {
        ephemeral_key: true,
        ..params(b"00", false)
    };
    let err = prepare(
        &sys_none(),
        &mapper,
        &disk,
        Path::new("/d"),
        &ephemeral,
        &never,
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::EphemeralKey { .. }), "{err}");
    assert!(fs::read(&disk).unwrap() == before);
}

fn sys_none() -> RecordingSyscall {
    RecordingSyscall::default()
}

#[test]
fn a_tampered_header_is_refused_and_not_reformatted() {
    let dir = tempfile::tempdir().unwrap();
    let plain = image(dir.path(), "plain", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&plain);
    // A LUKS magic with nothing valid behind it.
    let bad = image(dir.path(), "bad", DISK_LEN, &[(0, b"LUKS\xba\xbe\x00\x02")]);
    let before = fs::read(&bad).unwrap();
    let sys = RecordingSyscall::default();
    let err = prepare(
        &sys,
        &mapper,
        &bad,
        Path::new("/d"),
        &params(KEY, true),
        &never,
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::BadHeader { .. }), "{err}");
    assert!(fs::read(&bad).unwrap() == before);
    assert!(sys.calls().is_empty());
}

#[test]
fn other_content_needs_the_operators_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let plain = image(dir.path(), "plain", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&plain);
    let sys = RecordingSyscall::default();
    for (name, patch, what) in [
        (
            "ext4",
            &[0x53u8, 0xef][..],
            "an unencrypted ext4 filesystem",
        ),
        ("junk", &b"hello"[..], "unrecognised data"),
    ] {
        let offset = if name == "ext4" { 1080 } else { 0 };
        let disk = image(dir.path(), name, DISK_LEN, &[(offset, patch)]);
        let before = fs::read(&disk).unwrap();
        let err = prepare(
            &sys,
            &mapper,
            &disk,
            Path::new("/d"),
            &params(KEY, false),
            &never,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data disk {} holds {what}, not an encrypted dstack disk: refusing to format it (the operator may allow it with --format-nonempty-disk)",
                disk.display()
            )
        );
        assert!(fs::read(&disk).unwrap() == before);
        let formatted = Cell::new(0);
        let (outcome, _) = prepare(
            &sys,
            &mapper,
            &disk,
            Path::new("/d"),
            &params(KEY, true),
            &stamp_ext4(&formatted),
        )
        .unwrap();
        assert_eq!((outcome, formatted.get()), (DiskOutcome::Formatted, 1));
        assert_eq!(probe(&disk).unwrap(), DiskContent::Luks);
    }
}

#[test]
fn an_interrupted_first_format_is_finished_but_written_data_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", DISK_LEN, &[]);
    dstack_luks2::format(
        &mut fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap(),
        KEY,
        &mut rand_core::OsRng,
    )
    .unwrap();
    // The header is there but mkfs never ran: the payload is still zeros.
    let plain = image(dir.path(), "plain", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&plain);
    let sys = RecordingSyscall::default();
    let formatted = Cell::new(0);
    let (outcome, _) = prepare(
        &sys,
        &mapper,
        &disk,
        Path::new("/d"),
        &params(KEY, false),
        &stamp_ext4(&formatted),
    )
    .unwrap();
    assert_eq!((outcome, formatted.get()), (DiskOutcome::Formatted, 1));

    // Ciphertext in the payload but no ext4 inside: refused without the opt-in.
    let mut file = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    file.seek(SeekFrom::Start(dstack_luks2::DATA_OFFSET))
        .unwrap();
    file.write_all(&[0x5a; 4096]).unwrap();
    drop(file);
    let empty = image(dir.path(), "plain2", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&empty);
    let err = prepare(
        &sys,
        &mapper,
        &disk,
        Path::new("/d"),
        &params(KEY, false),
        &never,
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::NoFilesystem { .. }), "{err}");
    assert_eq!(
        *mapper.unmaps.lock().unwrap(),
        1,
        "the mapping is closed again"
    );
}

#[test]
fn a_failed_mount_and_a_missing_disk_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", DISK_LEN, &[]);
    let plain = image(dir.path(), "plain", 1 << 20, &[]);
    let mapper = fake::FakeMapper::onto(&plain);
    let sys = RecordingSyscall::default();
    sys.fail("/data", Errno::EINVAL);
    let formatted = Cell::new(0);
    let err = prepare(
        &sys,
        &mapper,
        &disk,
        Path::new("/data"),
        &params(KEY, false),
        &stamp_ext4(&formatted),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        DiskError::Mkdir { .. } | DiskError::Mount { .. }
    ));
    assert_eq!(
        *mapper.unmaps.lock().unwrap(),
        1,
        "unmapped after the failed mount"
    );

    let missing = dir.path().join("vdb");
    let err = wait_for_device(&missing, Duration::from_millis(20)).unwrap_err();
    assert!(err.to_string().contains("did not appear"), "{err}");
    fs::write(&missing, b"").unwrap();
    wait_for_device(&missing, Duration::from_millis(20)).unwrap();
}
