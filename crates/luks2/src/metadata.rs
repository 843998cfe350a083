//! The LUKS2 JSON metadata: written in cryptsetup's exact form, and read back
//! under one strict schema (the one layout this crate writes and upstream
//! dstack's `cryptsetup luksFormat` produces).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use crate::header::BIN_LEN;
use crate::{AF_STRIPES, CIPHER, DATA_OFFSET, KEY_LEN, Luks2Error, MIN_ITERATIONS, SECTOR_SIZE};

/// Keyslot areas are placed and sized in 4 KiB units (cryptsetup's
/// alignment).
pub(crate) const AREA_ALIGN: u64 = 4096;

/// The bytes of AF-split key material in the keyslot area.
pub(crate) const AF_LEN: usize = KEY_LEN * AF_STRIPES;

/// What the metadata holds beyond the fixed layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    /// Where keyslot 0's encrypted material starts, in bytes.
    pub(crate) area_offset: u64,
    /// The keyslot area's size, in bytes.
    pub(crate) area_size: u64,
    /// The size of the whole keyslots region (`config.keyslots_size`).
    pub(crate) keyslots_size: u64,
    pub(crate) kdf_iterations: u32,
    pub(crate) kdf_salt: [u8; 32],
    pub(crate) digest_iterations: u32,
    pub(crate) digest_salt: [u8; 32],
    pub(crate) digest: [u8; 32],
}

impl Metadata {
    /// The JSON text, byte for byte as cryptsetup 2.x's json-c writes it
    /// (same key order, no whitespace).
    pub(crate) fn to_json(&self, hdr_size: u64) -> String {
        format!(
            concat!(
                r#"{{"keyslots":{{"0":{{"type":"luks2","key_size":{key},"#,
                r#""af":{{"type":"luks1","stripes":{stripes},"hash":"sha256"}},"#,
                r#""area":{{"type":"raw","offset":"{aoff}","size":"{asize}","encryption":"{cipher}","key_size":{key}}},"#,
                r#""kdf":{{"type":"pbkdf2","hash":"sha256","iterations":{kiter},"salt":"{ksalt}"}}}}}},"#,
                r#""tokens":{{}},"#,
                r#""segments":{{"0":{{"type":"crypt","offset":"{doff}","size":"dynamic","iv_tweak":"0","encryption":"{cipher}","sector_size":{sector}}}}},"#,
                r#""digests":{{"0":{{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":{diter},"salt":"{dsalt}","digest":"{digest}"}}}},"#,
                r#""config":{{"json_size":"{json_size}","keyslots_size":"{ks_size}"}}}}"#,
            ),
            key = KEY_LEN,
            stripes = AF_STRIPES,
            aoff = self.area_offset,
            asize = self.area_size,
            cipher = CIPHER,
            kiter = self.kdf_iterations,
            ksalt = B64.encode(self.kdf_salt),
            doff = DATA_OFFSET,
            sector = SECTOR_SIZE,
            diter = self.digest_iterations,
            dsalt = B64.encode(self.digest_salt),
            digest = B64.encode(self.digest),
            json_size = hdr_size - BIN_LEN as u64,
            ks_size = self.keyslots_size,
        )
    }

    /// Parses and validates the JSON text of a header whose copies are
    /// `hdr_size` bytes. Every field is checked; anything not in the schema
    /// is refused.
    pub(crate) fn parse(json: &[u8], hdr_size: u64) -> Result<Self, Luks2Error> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| Luks2Error::corrupt("JSON area", e.to_string()))?;
        let root = Obj::root(&value)?;

        let keyslots = root.obj("keyslots")?;
        let keyslot = keyslots.only_entry("0", "exactly one keyslot, \"0\"")?;
        let tokens = root.obj("tokens")?;
        if !tokens.map.is_empty() {
            return Err(Luks2Error::unsupported(
                "tokens",
                format!("{} token(s)", tokens.map.len()),
                "no tokens",
            ));
        }
        let segments = root.obj("segments")?;
        let segment = segments.only_entry("0", "exactly one segment, \"0\"")?;
        let digests = root.obj("digests")?;
        let digest = digests.only_entry("0", "exactly one digest, \"0\"")?;

        let config = root.obj("config")?;
        let json_size = config.u64_str("json_size")?;
        if json_size != hdr_size - BIN_LEN as u64 {
            return Err(Luks2Error::corrupt(
                "config.json_size",
                format!(
                    "{json_size}, but the header's JSON area is {} bytes",
                    hdr_size - BIN_LEN as u64
                ),
            ));
        }
        let keyslots_size = config.u64_str("keyslots_size")?;
        if keyslots_size % AREA_ALIGN != 0 || keyslots_size > DATA_OFFSET - 2 * hdr_size {
            return Err(Luks2Error::corrupt(
                "config.keyslots_size",
                format!(
                    "{keyslots_size} does not fit, 4 KiB-aligned, between the header copies and the data segment"
                ),
            ));
        }
        // Known but refused (`flags`, `requirements`) and unknown keys alike.
        config.allow_only(&["json_size", "keyslots_size"])?;

        // Keyslot 0.
        keyslot.expect_str("type", "luks2")?;
        keyslot.expect_num("key_size", KEY_LEN as u64)?;
        let area = keyslot.obj("area")?;
        area.expect_str("type", "raw")?;
        area.expect_str("encryption", CIPHER)?;
        area.expect_num("key_size", KEY_LEN as u64)?;
        let area_offset = area.u64_str("offset")?;
        let area_size = area.u64_str("size")?;
        // Where the encrypted key material is read from: between the two
        // header copies and the data segment, never inside a header copy or
        // the encrypted data (a host could otherwise redirect it).
        let area_end = area_offset.checked_add(area_size);
        if area_offset < 2 * hdr_size || area_end.is_none_or(|end| end > DATA_OFFSET) {
            return Err(Luks2Error::unsupported(
                "keyslots.0.area",
                format!("offset {area_offset} size {area_size}"),
                format!(
                    "an area between the header copies and the data segment ({}..{DATA_OFFSET})",
                    2 * hdr_size
                ),
            ));
        }
        if area_offset % AREA_ALIGN != 0 || area_size % AREA_ALIGN != 0 {
            return Err(Luks2Error::corrupt(
                "keyslots.0.area",
                format!("offset {area_offset} size {area_size} are not 4 KiB-aligned"),
            ));
        }
        if area_end.is_none_or(|end| end > 2 * hdr_size + keyslots_size) {
            return Err(Luks2Error::corrupt(
                "keyslots.0.area",
                format!(
                    "offset {area_offset} size {area_size} runs past config.keyslots_size {keyslots_size}"
                ),
            ));
        }
        if area_size < AF_LEN as u64 {
            return Err(Luks2Error::corrupt(
                "keyslots.0.area.size",
                format!("{area_size} bytes cannot hold {AF_LEN} bytes of key material"),
            ));
        }
        area.allow_only(&["type", "offset", "size", "encryption", "key_size"])?;

        let kdf = keyslot.obj("kdf")?;
        kdf.expect_str("type", "pbkdf2")?;
        kdf.expect_str("hash", "sha256")?;
        let kdf_iterations = kdf.iterations("iterations")?;
        let kdf_salt = kdf.bytes32("salt")?;
        kdf.allow_only(&["type", "hash", "iterations", "salt"])?;

        let af = keyslot.obj("af")?;
        af.expect_str("type", "luks1")?;
        af.expect_str("hash", "sha256")?;
        af.expect_num("stripes", AF_STRIPES as u64)?;
        af.allow_only(&["type", "stripes", "hash"])?;
        // `priority` (even "normal") is refused with the unknown keys.
        keyslot.allow_only(&["type", "key_size", "af", "area", "kdf"])?;

        // Segment 0.
        segment.expect_str("type", "crypt")?;
        segment.expect_u64_str("offset", DATA_OFFSET)?;
        segment.expect_str("size", "dynamic")?;
        segment.expect_u64_str("iv_tweak", 0)?;
        segment.expect_str("encryption", CIPHER)?;
        segment.expect_num("sector_size", u64::from(SECTOR_SIZE))?;
        // `integrity` and `flags` are refused with the unknown keys.
        segment.allow_only(&[
            "type",
            "offset",
            "size",
            "iv_tweak",
            "encryption",
            "sector_size",
        ])?;

        // Digest 0.
        digest.expect_str("type", "pbkdf2")?;
        digest.expect_ids("keyslots")?;
        digest.expect_ids("segments")?;
        digest.expect_str("hash", "sha256")?;
        let digest_iterations = digest.iterations("iterations")?;
        let digest_salt = digest.bytes32("salt")?;
        let digest_value = digest.bytes32("digest")?;
        digest.allow_only(&[
            "type",
            "keyslots",
            "segments",
            "hash",
            "iterations",
            "salt",
            "digest",
        ])?;

        root.allow_only(&["keyslots", "tokens", "segments", "digests", "config"])?;
        Ok(Self {
            area_offset,
            area_size,
            keyslots_size,
            kdf_iterations,
            kdf_salt,
            digest_iterations,
            digest_salt,
            digest: digest_value,
        })
    }
}

/// A JSON object and its path, for field access with named errors.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl<'a> Obj<'a> {
    fn root(value: &'a Value) -> Result<Self, Luks2Error> {
        match value {
            Value::Object(map) => Ok(Self {
                path: String::new(),
                map,
            }),
            _ => Err(Luks2Error::corrupt("JSON area", "not a JSON object")),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Result<&'a Value, Luks2Error> {
        self.map
            .get(key)
            .ok_or_else(|| Luks2Error::corrupt(self.path(key), "missing"))
    }

    fn obj(&self, key: &str) -> Result<Obj<'a>, Luks2Error> {
        match self.get(key)? {
            Value::Object(map) => Ok(Obj {
                path: self.path(key),
                map,
            }),
            other => Err(Luks2Error::corrupt(
                self.path(key),
                format!("{} is not an object", describe(other)),
            )),
        }
    }

    /// The object's one entry, which must be named `id`.
    fn only_entry(&self, id: &str, expected: &str) -> Result<Obj<'a>, Luks2Error> {
        let found = || {
            let ids: Vec<&str> = self.map.keys().map(String::as_str).collect();
            format!("{ids:?}")
        };
        if self.map.len() != 1 || !self.map.contains_key(id) {
            return Err(Luks2Error::unsupported(&self.path, found(), expected));
        }
        self.obj(id)
    }

    fn str(&self, key: &str) -> Result<&'a str, Luks2Error> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => Err(Luks2Error::corrupt(
                self.path(key),
                format!("{} is not a string", describe(other)),
            )),
        }
    }

    fn expect_str(&self, key: &str, expected: &str) -> Result<(), Luks2Error> {
        let found = self.str(key)?;
        if found != expected {
            return Err(Luks2Error::unsupported(
                self.path(key),
                format!("{found:?}"),
                format!("{expected:?}"),
            ));
        }
        Ok(())
    }

    /// A LUKS2 64-bit number, which the format writes as a decimal string.
    fn u64_str(&self, key: &str) -> Result<u64, Luks2Error> {
        let text = self.str(key)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Luks2Error::corrupt(
                self.path(key),
                format!("{text:?} is not a decimal number"),
            ));
        }
        text.parse().map_err(|_| {
            Luks2Error::corrupt(self.path(key), format!("{text:?} does not fit 64 bits"))
        })
    }

    fn expect_u64_str(&self, key: &str, expected: u64) -> Result<(), Luks2Error> {
        let found = self.u64_str(key)?;
        if found != expected {
            return Err(Luks2Error::unsupported(
                self.path(key),
                found.to_string(),
                expected.to_string(),
            ));
        }
        Ok(())
    }

    /// A JSON number that must be a non-negative integer.
    fn num(&self, key: &str) -> Result<u64, Luks2Error> {
        let value = self.get(key)?;
        value.as_u64().ok_or_else(|| {
            Luks2Error::corrupt(
                self.path(key),
                format!("{} is not a non-negative integer", describe(value)),
            )
        })
    }

    fn expect_num(&self, key: &str, expected: u64) -> Result<(), Luks2Error> {
        let found = self.num(key)?;
        if found != expected {
            return Err(Luks2Error::unsupported(
                self.path(key),
                found.to_string(),
                expected.to_string(),
            ));
        }
        Ok(())
    }

    /// A PBKDF2 iteration count: cryptsetup's minimum or more, within 32 bits.
    fn iterations(&self, key: &str) -> Result<u32, Luks2Error> {
        let found = self.num(key)?;
        match u32::try_from(found) {
            Ok(n) if n >= MIN_ITERATIONS => Ok(n),
            _ => Err(Luks2Error::unsupported(
                self.path(key),
                found.to_string(),
                format!("{MIN_ITERATIONS} to {}", u32::MAX),
            )),
        }
    }

    /// A base64 string of exactly 32 bytes (salts and the sha256 digest).
    fn bytes32(&self, key: &str) -> Result<[u8; 32], Luks2Error> {
        let text = self.str(key)?;
        let bytes = B64
            .decode(text)
            .map_err(|e| Luks2Error::corrupt(self.path(key), format!("not base64: {e}")))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            Luks2Error::corrupt(self.path(key), format!("{} bytes, not 32", bytes.len()))
        })
    }

    /// A list of ids that must be exactly `["0"]`.
    fn expect_ids(&self, key: &str) -> Result<(), Luks2Error> {
        let value = self.get(key)?;
        let ok =
            matches!(value.as_array().map(Vec::as_slice), Some([Value::String(id)]) if id == "0");
        if !ok {
            return Err(Luks2Error::unsupported(
                self.path(key),
                describe(value),
                r#"["0"]"#,
            ));
        }
        Ok(())
    }

    /// Refuses any key not in `allowed`.
    fn allow_only(&self, allowed: &[&str]) -> Result<(), Luks2Error> {
        match self
            .map
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            Some((key, value)) => Err(Luks2Error::unsupported(
                self.path(key),
                describe(value),
                "no such field",
            )),
            None => Ok(()),
        }
    }
}
