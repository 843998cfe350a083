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

#[test]
fn an_empty_disk_is_formatted_then_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", 1 << 20, &[]);
    let sys = RecordingSyscall::default();
    let formatted = Cell::new(0);
    let format = |_: &Path| {
        formatted.set(formatted.get() + 1);
        Ok(())
    };
    let outcome = prepare(&sys, &disk, Path::new("/data"), &format).unwrap();
    assert_eq!(outcome, DiskOutcome::Formatted);
    assert_eq!(formatted.get(), 1);
    let m = mounts(&sys);
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].target.as_str(), m[0].fstype.as_str()),
        ("/data", "ext4")
    );
    assert!(m[0].flags.contains(MsFlags::MS_NOATIME));
    let calls = sys.calls();
    for sub in ["/data/volumes", "/data/images", "/data/containers"] {
        assert!(calls.contains(&Call::Mkdir(sub.into())), "{sub}");
    }
}

#[test]
fn ext4_is_mounted_without_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", 1 << 20, &[(1080, &[0x53, 0xef])]);
    let sys = RecordingSyscall::default();
    let never = |_: &Path| -> Result<(), DiskError> { panic!("must not format") };
    let outcome = prepare(&sys, &disk, Path::new("/data"), &never).unwrap();
    assert_eq!(outcome, DiskOutcome::Mounted);
    assert_eq!(mounts(&sys).len(), 1);
}

#[test]
fn luks_and_unknown_disks_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let never = |_: &Path| -> Result<(), DiskError> { panic!("must not format") };
    let luks = image(dir.path(), "luks", 1 << 20, &[(0, b"LUKS\xba\xbe")]);
    let sys = RecordingSyscall::default();
    let err = prepare(&sys, &luks, Path::new("/data"), &never).unwrap_err();
    assert!(matches!(err, DiskError::Encrypted { .. }));
    assert!(err.to_string().contains("LUKS header"), "{err}");
    assert!(sys.calls().is_empty(), "nothing mounted or created");

    let junk = image(dir.path(), "junk", 1 << 20, &[(0, b"hello")]);
    let err = prepare(&sys, &junk, Path::new("/data"), &never).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "data disk {} holds unrecognised data, not ext4: refusing to format it",
            junk.display()
        )
    );
}

#[test]
fn a_failed_mount_and_a_missing_disk_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "vda", 1 << 20, &[(1080, &[0x53, 0xef])]);
    let sys = RecordingSyscall::default();
    sys.fail("/data", Errno::EINVAL);
    let ok = |_: &Path| Ok(());
    let err = prepare(&sys, &disk, Path::new("/data"), &ok).unwrap_err();
    assert!(matches!(
        err,
        DiskError::Mkdir { .. } | DiskError::Mount { .. }
    ));

    let missing = dir.path().join("vdb");
    let err = wait_for_device(&missing, Duration::from_millis(20)).unwrap_err();
    assert!(err.to_string().contains("did not appear"), "{err}");
    fs::write(&missing, b"").unwrap();
    wait_for_device(&missing, Duration::from_millis(20)).unwrap();
}
