//! Format/open round trips and every validation rule, on in-memory disks.

use std::io::Cursor;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::OsRng;
use serde_json::{Value, json};

use super::*;
use crate::header::layout;

const PASS: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const HDR: usize = 16 * 1024;
const DATA: usize = 16 * 1024 * 1024;
/// A disk just big enough for the metadata and 1 MiB of data.
const DISK: usize = DATA + 1024 * 1024;

#[test]
fn test_constants_match() {
    assert_eq!(u64::try_from(HDR).unwrap(), HEADER_SIZE);
    assert_eq!(u64::try_from(DATA).unwrap(), DATA_OFFSET);
}

fn formatted() -> (Vec<u8>, Volume) {
    let mut disk = Cursor::new(vec![0u8; DISK]);
    let volume = format(&mut disk, PASS, &mut OsRng).unwrap();
    (disk.into_inner(), volume)
}

fn open_img(img: &[u8], pass: &[u8]) -> Result<Volume, Luks2Error> {
    // A `Cursor<&[u8]>` cannot be written to: `open` is read-only by type.
    open(&mut Cursor::new(img), pass)
}

/// Recomputes the checksum of copy `index` (0 or 1).
fn reseal(img: &mut [u8], index: usize) {
    let area = &mut img[index * HDR..(index + 1) * HDR];
    let sum = header::checksum(area);
    area[layout::CSUM..layout::CSUM + 32].copy_from_slice(&sum);
}

fn json_of(img: &[u8], index: usize) -> Value {
    let area = &img[index * HDR + BIN_LEN..(index + 1) * HDR];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

fn set_json_text(img: &mut [u8], index: usize, text: &[u8]) {
    let area = &mut img[index * HDR + BIN_LEN..(index + 1) * HDR];
    area.fill(0);
    area[..text.len()].copy_from_slice(text);
    reseal(img, index);
}

/// Edits the JSON of both copies alike and reseals them, so only the
/// edited rule can trip.
fn edit_json(img: &mut [u8], edit: impl FnOnce(&mut Value)) {
    let mut value = json_of(img, 0);
    edit(&mut value);
    let text = serde_json::to_vec(&value).unwrap();
    set_json_text(img, 0, &text);
    set_json_text(img, 1, &text);
}

/// Edits the binary header of copy `index` and reseals it.
fn edit_bin(img: &mut [u8], index: usize, edit: impl FnOnce(&mut [u8])) {
    edit(&mut img[index * HDR..index * HDR + BIN_LEN]);
    reseal(img, index);
}

fn assert_unsupported(err: Luks2Error, field: &str) {
    match &err {
        Luks2Error::Unsupported { what, .. } if what == field => {}
        _ => panic!("expected Unsupported {{ what: {field:?} }}, got {err:?}"),
    }
}

fn assert_corrupt(err: Luks2Error, field: &str) {
    match &err {
        Luks2Error::Corrupt { what, .. } if what == field => {}
        _ => panic!("expected Corrupt {{ what: {field:?} }}, got {err:?}"),
    }
}

#[test]
fn format_then_open_returns_the_same_key() {
    let (img, made) = formatted();
    let opened = open_img(&img, PASS).unwrap();
    assert_eq!(opened.key(), made.key());
    assert_ne!(opened.key(), &[0u8; KEY_LEN]);
    assert_eq!(opened.uuid(), made.uuid());
    assert_eq!(
        opened.segment(),
        Segment {
            offset: 16_777_216,
            sector_size: 512,
            cipher: "aes-xts-plain64"
        }
    );
    validate(&mut Cursor::new(&img[..])).unwrap();
    // A second format makes a different volume.
    let (img2, _) = formatted();
    assert_ne!(open_img(&img2, PASS).unwrap().key(), made.key());
}

#[test]
fn layout_is_cryptsetups() {
    let (img, volume) = formatted();
    assert_eq!(&img[..6], b"LUKS\xba\xbe");
    assert_eq!(&img[HDR..HDR + 6], b"SKUL\xba\xbe");
    assert_eq!(&img[6..8], &[0, 2]);
    assert_eq!(img[8..16], 16384u64.to_be_bytes());
    assert_eq!(img[HDR + 256..HDR + 264], 16384u64.to_be_bytes());
    assert_eq!(&img[168..204], volume.uuid().as_bytes());
    let uuid = volume.uuid().as_bytes();
    assert_eq!((uuid.len(), uuid[14], uuid[8]), (36, b'4', b'-'));
    // Per-copy random salts.
    assert_ne!(img[104..168], img[HDR + 104..HDR + 168]);
    let j = json_of(&img, 0);
    assert_eq!(j, json_of(&img, 1));
    let ks = &j["keyslots"]["0"];
    assert_eq!(ks["area"]["offset"], "32768");
    assert_eq!(ks["area"]["size"], "258048");
    assert_eq!(ks["kdf"]["iterations"], 1000);
    assert_eq!(j["digests"]["0"]["iterations"], 1000);
    assert_eq!(j["segments"]["0"]["offset"], "16777216");
    assert_eq!(j["segments"]["0"]["sector_size"], 512);
    assert_eq!(j["config"]["json_size"], "12288");
    assert_eq!(j["config"]["keyslots_size"], "16744448");
    // Key material fills 256000 bytes of the area; the rest of it is zero.
    let area = &img[32768..32768 + 258_048];
    assert!(area[..256_000].iter().filter(|&&b| b == 0).count() < 2000);
    assert!(area[256_000..].iter().all(|&b| b == 0));
}

#[test]
fn wrong_passphrase_is_named() {
    let (img, _) = formatted();
    for pass in [
        &b"wrong"[..],
        b"",
        &PASS[..63],
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeF",
    ] {
        assert!(
            matches!(open_img(&img, pass), Err(Luks2Error::WrongPassphrase)),
            "{pass:?}"
        );
    }
}

#[test]
fn damaged_key_material_or_digest_does_not_open() {
    let (mut img, _) = formatted();
    img[32768 + 100_000] ^= 1;
    assert!(matches!(
        open_img(&img, PASS),
        Err(Luks2Error::WrongPassphrase)
    ));

    let (mut img, _) = formatted();
    edit_json(&mut img, |j| {
        j["digests"]["0"]["digest"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    });
    assert!(matches!(
        open_img(&img, PASS),
        Err(Luks2Error::WrongPassphrase)
    ));
}

/// `open` derives with the header's iteration counts, not a fixed 1000.
#[test]
fn iteration_counts_come_from_the_header() {
    let (mut img, volume) = formatted();
    let j = json_of(&img, 0);
    let salt = B64
        .decode(j["keyslots"]["0"]["kdf"]["salt"].as_str().unwrap())
        .unwrap();
    let dsalt = B64
        .decode(j["digests"]["0"]["salt"].as_str().unwrap())
        .unwrap();
    // Re-wrap the same volume key under 1500 keyslot iterations and a
    // 1234-iteration digest, as cryptsetup's benchmarked counts would.
    let slot_key = crypto::keyslot_key(PASS, &salt, 1500);
    let mut material = af::split(volume.key(), AF_STRIPES, &mut OsRng);
    crypto::encrypt_area(&slot_key, &mut material);
    img[32768..32768 + AF_LEN].copy_from_slice(&material);
    let digest = crypto::volume_key_digest(volume.key(), &dsalt, 1234);
    edit_json(&mut img, |j| {
        j["keyslots"]["0"]["kdf"]["iterations"] = json!(1500);
        j["digests"]["0"]["iterations"] = json!(1234);
        j["digests"]["0"]["digest"] = json!(B64.encode(digest));
    });
    assert_eq!(open_img(&img, PASS).unwrap().key(), volume.key());
}

#[test]
fn open_never_writes() {
    let (img, _) = formatted();
    let path = tempfile::NamedTempFile::new().unwrap();
    let mut broken = img.clone();
    broken[HDR + 300] = 1; // secondary padding, checksum now wrong
    for (content, pass) in [(&img, PASS), (&img, &b"wrong"[..]), (&broken, PASS)] {
        std::fs::write(path.path(), content).unwrap();
        // Opened read-only: a write would fail with EBADF.
        let mut file = std::fs::File::open(path.path()).unwrap();
        let _ = open(&mut file, pass);
        assert_eq!(&std::fs::read(path.path()).unwrap(), content);
    }
    assert!(open(&mut std::fs::File::open(path.path()).unwrap(), PASS).is_err());
}

#[test]
fn format_wipes_the_metadata_region_only() {
    let mut disk = Cursor::new(vec![0xaau8; DISK]);
    let volume = format(&mut disk, PASS, &mut OsRng).unwrap();
    let img = disk.into_inner();
    // Between the headers' JSON and the end of the region, only the key
    // material is non-zero.
    let json_end = |i: usize| {
        let start = i * HDR + BIN_LEN;
        start + img[start..].iter().position(|&b| b == 0).unwrap()
    };
    assert!(img[json_end(0)..HDR].iter().all(|&b| b == 0));
    assert!(img[json_end(1)..2 * HDR].iter().all(|&b| b == 0));
    assert!(img[32768 + 256_000..DATA].iter().all(|&b| b == 0));
    assert!(img[DATA..].iter().all(|&b| b == 0xaa));
    assert_eq!(open_img(&img, PASS).unwrap().key(), volume.key());
}

#[test]
fn format_refuses_a_small_device() {
    let mut disk = Cursor::new(vec![0u8; DATA]);
    let err = format(&mut disk, PASS, &mut OsRng).unwrap_err();
    assert!(matches!(
        err,
        Luks2Error::TooSmall {
            size: 16_777_216,
            need: 16_777_728
        }
    ));
    assert!(disk.into_inner().iter().all(|&b| b == 0), "nothing written");
}

#[test]
fn probe_finds_either_copy() {
    let empty = vec![0u8; DISK];
    assert!(!probe(&mut Cursor::new(&empty[..])).unwrap());
    assert!(
        !probe(&mut Cursor::new(&b"LUKS"[..])).unwrap(),
        "short device"
    );
    let (mut img, _) = formatted();
    assert!(probe(&mut Cursor::new(&img[..])).unwrap());
    img[..HDR].fill(0);
    assert!(probe(&mut Cursor::new(&img[..])).unwrap(), "secondary only");
    assert!(open_img(&img, PASS).is_err());
    // LUKS1, and a LUKS2 secondary at the largest offset.
    let mut luks1 = vec![0u8; 4096];
    luks1[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
    assert!(probe(&mut Cursor::new(&luks1[..])).unwrap());
    let mut far = vec![0u8; 0x40_0000 + 6];
    far[0x40_0000..].copy_from_slice(b"SKUL\xba\xbe");
    assert!(probe(&mut Cursor::new(&far[..])).unwrap());
    // A secondary magic at an offset LUKS2 never uses is not a header.
    let mut odd = vec![0u8; 0x5000];
    odd[0x3000..0x3006].copy_from_slice(b"SKUL\xba\xbe");
    assert!(!probe(&mut Cursor::new(&odd[..])).unwrap());
}

#[test]
fn volume_debug_hides_the_key_and_dm_params_show_it() {
    let (_, volume) = formatted();
    let hex: String = volume.key().iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{volume:?}");
    assert!(!debug.contains(&hex[..16]), "{debug}");
    assert!(debug.contains("redacted") && debug.contains(volume.uuid()));
    let params = volume.dm_crypt_params("/dev/vdb");
    assert_eq!(*params, format!("aes-xts-plain64 {hex} 0 /dev/vdb 32768"));
}

/// Every JSON rule: the edit breaks exactly one rule of a good header (both
/// copies edited alike and resealed), and `open` names that field.
#[test]
fn every_json_rule_is_enforced() {
    type Edit = fn(&mut Value);
    let unsupported: &[(&str, Edit)] = &[
        // A host swapping in a null cipher for the keyslot or the data.
        ("keyslots.0.area.encryption", |j| {
            j["keyslots"]["0"]["area"]["encryption"] = json!("cipher_null-ecb")
        }),
        ("segments.0.encryption", |j| {
            j["segments"]["0"]["encryption"] = json!("cipher_null-ecb")
        }),
        // A host redirecting the keyslot area into a header copy, the data,
        // or past the end of the metadata.
        ("keyslots.0.area", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!("00768")
        }),
        ("keyslots.0.area", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!("16384")
        }),
        ("keyslots.0.area", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!("16777216")
        }),
        ("keyslots.0.area", |j| {
            j["keyslots"]["0"]["area"]["size"] = json!("16748544")
        }),
        ("keyslots.0.area", |j| {
            j["keyslots"]["0"]["area"]["size"] = json!("18446744073709551615")
        }),
        ("keyslots", |j| {
            j["keyslots"]["1"] = j["keyslots"]["0"].clone()
        }),
        ("keyslots", |j| {
            let ks = j["keyslots"].as_object_mut().unwrap().remove("0").unwrap();
            j["keyslots"]["1"] = ks;
        }),
        ("keyslots", |j| j["keyslots"] = json!({})),
        ("keyslots.0.type", |j| {
            j["keyslots"]["0"]["type"] = json!("reencrypt")
        }),
        ("keyslots.0.key_size", |j| {
            j["keyslots"]["0"]["key_size"] = json!(32)
        }),
        ("keyslots.0.area.type", |j| {
            j["keyslots"]["0"]["area"]["type"] = json!("datashift")
        }),
        ("keyslots.0.area.key_size", |j| {
            j["keyslots"]["0"]["area"]["key_size"] = json!(32)
        }),
        ("keyslots.0.area.foo", |j| {
            j["keyslots"]["0"]["area"]["foo"] = json!(1)
        }),
        ("keyslots.0.kdf.type", |j| {
            j["keyslots"]["0"]["kdf"] = json!({"type": "argon2id", "time": 4, "memory": 1048576, "cpus": 4, "salt": "AA=="});
        }),
        ("keyslots.0.kdf.hash", |j| {
            j["keyslots"]["0"]["kdf"]["hash"] = json!("sha1")
        }),
        ("keyslots.0.kdf.iterations", |j| {
            j["keyslots"]["0"]["kdf"]["iterations"] = json!(999)
        }),
        ("keyslots.0.kdf.iterations", |j| {
            j["keyslots"]["0"]["kdf"]["iterations"] = json!(4_294_967_296u64)
        }),
        ("keyslots.0.kdf.time", |j| {
            j["keyslots"]["0"]["kdf"]["time"] = json!(4)
        }),
        ("keyslots.0.af.type", |j| {
            j["keyslots"]["0"]["af"]["type"] = json!("luks2")
        }),
        ("keyslots.0.af.hash", |j| {
            j["keyslots"]["0"]["af"]["hash"] = json!("sha512")
        }),
        ("keyslots.0.af.stripes", |j| {
            j["keyslots"]["0"]["af"]["stripes"] = json!(1)
        }),
        ("keyslots.0.af.extra", |j| {
            j["keyslots"]["0"]["af"]["extra"] = json!(null)
        }),
        ("keyslots.0.priority", |j| {
            j["keyslots"]["0"]["priority"] = json!(1)
        }),
        ("tokens", |j| {
            j["tokens"]["0"] = json!({"type": "luks2-keyring", "keyslots": ["0"]})
        }),
        ("segments", |j| {
            j["segments"]["1"] = j["segments"]["0"].clone()
        }),
        ("segments.0.type", |j| {
            j["segments"]["0"]["type"] = json!("linear")
        }),
        ("segments.0.offset", |j| {
            j["segments"]["0"]["offset"] = json!("0")
        }),
        ("segments.0.offset", |j| {
            j["segments"]["0"]["offset"] = json!("32768")
        }),
        ("segments.0.size", |j| {
            j["segments"]["0"]["size"] = json!("1048576")
        }),
        ("segments.0.iv_tweak", |j| {
            j["segments"]["0"]["iv_tweak"] = json!("1")
        }),
        ("segments.0.sector_size", |j| {
            j["segments"]["0"]["sector_size"] = json!(4096)
        }),
        ("segments.0.integrity", |j| {
            j["segments"]["0"]["integrity"] = json!({"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"});
        }),
        ("segments.0.flags", |j| {
            j["segments"]["0"]["flags"] = json!(["backup-previous"])
        }),
        ("digests", |j| j["digests"]["1"] = j["digests"]["0"].clone()),
        ("digests.0.type", |j| {
            j["digests"]["0"]["type"] = json!("argon2")
        }),
        ("digests.0.hash", |j| {
            j["digests"]["0"]["hash"] = json!("sha1")
        }),
        ("digests.0.keyslots", |j| {
            j["digests"]["0"]["keyslots"] = json!(["1"])
        }),
        ("digests.0.keyslots", |j| {
            j["digests"]["0"]["keyslots"] = json!(["0", "0"])
        }),
        ("digests.0.segments", |j| {
            j["digests"]["0"]["segments"] = json!([])
        }),
        ("digests.0.segments", |j| {
            j["digests"]["0"]["segments"] = json!([0])
        }),
        ("digests.0.iterations", |j| {
            j["digests"]["0"]["iterations"] = json!(0)
        }),
        ("config.flags", |j| {
            j["config"]["flags"] = json!(["allow-discards"])
        }),
        ("config.requirements", |j| {
            j["config"]["requirements"] = json!({"mandatory": ["online-reencrypt-v2"]})
        }),
        ("extra", |j| j["extra"] = json!({})),
    ];
    let corrupt: &[(&str, Edit)] = &[
        ("keyslots.0.kdf.salt", |j| {
            j["keyslots"]["0"]["kdf"]
                .as_object_mut()
                .unwrap()
                .remove("salt");
        }),
        ("keyslots.0.kdf.salt", |j| {
            j["keyslots"]["0"]["kdf"]["salt"] = json!("AAAAAAAAAAAAAAAAAAAAAA==")
        }),
        ("keyslots.0.kdf.salt", |j| {
            j["keyslots"]["0"]["kdf"]["salt"] = json!("not base64!")
        }),
        ("digests.0.digest", |j| {
            j["digests"]["0"]["digest"] = json!(42)
        }),
        ("keyslots.0.key_size", |j| {
            j["keyslots"]["0"]["key_size"] = json!("64")
        }),
        ("keyslots.0.area.offset", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!(32768)
        }),
        ("keyslots.0.area.offset", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!("+32768")
        }),
        ("keyslots.0.area.offset", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!("99999999999999999999")
        }),
        ("keyslots.0.area", |j| {
            j["keyslots"]["0"]["area"]["offset"] = json!("33280")
        }),
        ("keyslots.0.area", |j| {
            j["config"]["keyslots_size"] = json!("253952")
        }),
        ("keyslots.0.area.size", |j| {
            j["keyslots"]["0"]["area"]["size"] = json!("4096")
        }),
        ("config.json_size", |j| {
            j["config"]["json_size"] = json!("16384")
        }),
        ("config.keyslots_size", |j| {
            j["config"]["keyslots_size"] = json!("16748544")
        }),
        ("config.keyslots_size", |j| {
            j["config"]["keyslots_size"] = json!("16744447")
        }),
        ("segments", |j| j["segments"] = json!([])),
        ("config", |j| {
            j.as_object_mut().unwrap().remove("config");
        }),
    ];
    let (good, _) = formatted();
    for (cases, unsupported) in [(unsupported, true), (corrupt, false)] {
        for (field, edit) in cases {
            let mut img = good.clone();
            edit_json(&mut img, edit);
            let err = open_img(&img, PASS).unwrap_err();
            let err_no_pass = validate(&mut Cursor::new(&img[..])).unwrap_err();
            assert_eq!(err.to_string(), err_no_pass.to_string());
            if unsupported {
                assert_unsupported(err, field);
            } else {
                assert_corrupt(err, field);
            }
        }
    }
    // The control: re-serialising without an edit still opens.
    let mut img = good.clone();
    edit_json(&mut img, |_| {});
    open_img(&img, PASS).unwrap();
}

#[test]
fn malformed_json_is_corrupt() {
    let (good, _) = formatted();
    for text in [&b"not json"[..], b"[]", b"{\"keyslots\":"] {
        let mut img = good.clone();
        set_json_text(&mut img, 0, text);
        set_json_text(&mut img, 1, text);
        assert_corrupt(open_img(&img, PASS).unwrap_err(), "JSON area");
    }
    // No NUL terminator anywhere in the JSON area.
    let mut img = good.clone();
    for i in 0..2 {
        img[i * HDR + BIN_LEN..(i + 1) * HDR].fill(b' ');
        reseal(&mut img, i);
    }
    assert_corrupt(
        open_img(&img, PASS).unwrap_err(),
        "primary header JSON area",
    );
}

/// Every binary header rule, on either copy.
#[test]
fn every_binary_header_rule_is_enforced() {
    type Edit = fn(&mut [u8]);
    let cases: &[(usize, &str, bool, Edit)] = &[
        (0, "primary header version", true, |b| {
            b[layout::VERSION + 1] = 1
        }),
        (1, "secondary header version", true, |b| {
            b[layout::VERSION + 1] = 3
        }),
        (0, "primary header hdr_size", false, |b| {
            b[layout::HDR_SIZE + 6] = 0x30
        }),
        (0, "primary header hdr_size", false, |b| {
            b[layout::HDR_SIZE] = 1
        }),
        (1, "secondary header hdr_size", false, |b| {
            b[layout::HDR_SIZE + 6] = 0x80
        }),
        (0, "primary header hdr_offset", false, |b| {
            b[layout::HDR_OFFSET + 6] = 0x40
        }),
        (1, "secondary header hdr_offset", false, |b| {
            b[layout::HDR_OFFSET + 6] = 0
        }),
        (0, "primary header checksum_alg", true, |b| {
            b[layout::CSUM_ALG + 5] = b'5'
        }),
        (1, "secondary header checksum_alg", true, |b| {
            b[layout::CSUM_ALG + 6] = b'x'
        }),
        (0, "primary header label", true, |b| b[layout::LABEL] = b'x'),
        (1, "secondary header label", true, |b| {
            b[layout::LABEL + 47] = 1
        }),
        (0, "primary header subsystem", true, |b| {
            b[layout::SUBSYSTEM] = b'x'
        }),
        (1, "secondary header subsystem", true, |b| {
            b[layout::SUBSYSTEM] = b'x'
        }),
        (0, "primary header uuid", false, |b| b[layout::UUID] = b'X'),
        (1, "secondary header uuid", false, |b| {
            b[layout::UUID + 36] = b'x'
        }),
        (0, "primary header padding", false, |b| {
            b[layout::PADDING] = 1
        }),
        (1, "secondary header padding", false, |b| b[4095] = 1),
        (0, "primary header padding", false, |b| {
            b[layout::CSUM + 40] = 1
        }),
        (0, "primary header magic", false, |b| b[0] = b'l'),
        (1, "secondary header magic", false, |b| {
            b[..6].copy_from_slice(b"LUKS\xba\xbe")
        }),
        (1, "header copies", false, |b| b[layout::SEQID + 7] = 2),
        (0, "header copies", false, |b| {
            b[layout::UUID + 35] = if b[layout::UUID + 35] == b'0' {
                b'1'
            } else {
                b'0'
            };
        }),
    ];
    let (good, _) = formatted();
    for &(index, field, unsupported, edit) in cases {
        let mut img = good.clone();
        edit_bin(&mut img, index, edit);
        let err = open_img(&img, PASS).unwrap_err();
        if unsupported {
            assert_unsupported(err, field);
        } else {
            assert_corrupt(err, field);
        }
    }
}

#[test]
fn both_copies_must_be_present_valid_and_equal() {
    let (good, _) = formatted();
    for index in 0..2 {
        // A stale checksum.
        let mut img = good.clone();
        img[index * HDR + BIN_LEN + 20] ^= 1;
        let name = ["primary header checksum", "secondary header checksum"][index];
        assert_corrupt(open_img(&img, PASS).unwrap_err(), name);
        // A wiped copy.
        let mut img = good.clone();
        img[index * HDR..(index + 1) * HDR].fill(0);
        let name = ["primary header magic", "secondary header magic"][index];
        assert_corrupt(open_img(&img, PASS).unwrap_err(), name);
    }
    // Copies whose JSON differs (each one valid on its own).
    let mut img = good.clone();
    let mut j = json_of(&img, 1);
    j["keyslots"]["0"]["kdf"]["iterations"] = json!(2000);
    set_json_text(&mut img, 1, &serde_json::to_vec(&j).unwrap());
    assert_corrupt(open_img(&img, PASS).unwrap_err(), "header copies");
    // A device cut short inside the keyslot area.
    let short = &good[..40_000];
    assert!(matches!(open_img(short, PASS), Err(Luks2Error::Io { .. })));
}
