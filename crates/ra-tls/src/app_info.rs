//! The `.9` app-info extension (UPSTREAM §6): upstream's `AppInfo` as
//! rmp-serde writes it, a msgpack array of its fields in order with bytes as
//! `bin`: app_id, compose_hash, instance_id, device_id, mr_system,
//! mr_aggregated, os_image_hash, key_provider_info, init_script_hashes (an
//! array of 32-byte `bin`; upstream reads an 8-element array as "not bound").

/// Most init scripts an app may measure (upstream's limit).
const MAX_INIT_SCRIPTS: usize = 5;

/// An app's identity and measurements as a certificate carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertAppInfo {
    /// App id (20 bytes).
    pub app_id: Vec<u8>,
    /// SHA-256 of the app-compose.json bytes.
    pub compose_hash: Vec<u8>,
    /// Instance id (20 bytes, or empty).
    pub instance_id: Vec<u8>,
    /// Device id (SHA-256 of the platform's device identity).
    pub device_id: Vec<u8>,
    /// SHA-256(MRTD ‖ RTMR0-2 ‖ mr_key_provider).
    pub mr_system: [u8; 32],
    /// SHA-256(MRTD ‖ RTMR0-3 [‖ config ids]).
    pub mr_aggregated: [u8; 32],
    /// The OS image hash (empty when unknown).
    pub os_image_hash: Vec<u8>,
    /// The `key-provider` event payload.
    pub key_provider_info: Vec<u8>,
    /// SHA-256 of each init script, in execution order.
    pub init_script_hashes: Vec<[u8; 32]>,
}

/// Why `.9` bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppInfoDecodeError {
    /// The bytes end early.
    #[error("app info truncated at byte {0}")]
    Truncated(usize),
    /// A value of an unexpected msgpack type.
    #[error("app info byte {at}: expected {expected}")]
    Type {
        /// Offset of the value.
        at: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// A fixed-size field has the wrong length.
    #[error("app info field {field} is {got} bytes, expected {expected}")]
    Length {
        /// The field.
        field: &'static str,
        /// Its length.
        got: usize,
        /// The required length.
        expected: usize,
    },
    /// Bytes are left after the array.
    #[error("{0} trailing bytes after the app info")]
    Trailing(usize),
}

impl CertAppInfo {
    /// The app info of an app whose quote carries `report`: its identity as
    /// the app states it, its measurements as the report gives them (the
    /// `key-provider` payload goes into `mr_system`). No init scripts.
    pub fn measured(
        report: &dstack_attest::TdReport,
        app_id: &[u8],
        compose_hash: &[u8],
        instance_id: &[u8],
        os_image_hash: &[u8],
        key_provider_info: &str,
    ) -> Self {
        let measures = dstack_attest::Measures::of(report, key_provider_info.as_bytes());
        Self {
            app_id: app_id.to_vec(),
            compose_hash: compose_hash.to_vec(),
            instance_id: instance_id.to_vec(),
            device_id: measures.device_id.to_vec(),
            mr_system: measures.mr_system,
            mr_aggregated: measures.mr_aggregated,
            os_image_hash: os_image_hash.to_vec(),
            key_provider_info: key_provider_info.as_bytes().to_vec(),
            init_script_hashes: Vec::new(),
        }
    }

    /// The `.9` extension value (a 9-element msgpack array).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x99]; // fixarray of 9
        for field in [
            &self.app_id[..],
            &self.compose_hash[..],
            &self.instance_id[..],
            &self.device_id[..],
            &self.mr_system[..],
            &self.mr_aggregated[..],
            &self.os_image_hash[..],
            &self.key_provider_info[..],
        ] {
            bin(&mut out, field);
        }
        // At most MAX_INIT_SCRIPTS (5) entries: always a fixarray.
        let count = self.init_script_hashes.len().min(MAX_INIT_SCRIPTS);
        out.push(0x90 | u8::try_from(count).unwrap_or(0));
        for hash in &self.init_script_hashes[..count] {
            bin(&mut out, hash);
        }
        out
    }

    /// Decodes `.9` bytes: upstream's 9-element form, or the older 8-element
    /// form (no init-script hashes).
    pub fn decode(bytes: &[u8]) -> Result<Self, AppInfoDecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let len = r.array_len()?;
        if !(8..=9).contains(&len) {
            return Err(AppInfoDecodeError::Type {
                at: 0,
                expected: "an array of 8 or 9 fields",
            });
        }
        let mut info = Self {
            app_id: r.bin()?.to_vec(),
            compose_hash: r.bin()?.to_vec(),
            instance_id: r.bin()?.to_vec(),
            device_id: r.bin()?.to_vec(),
            mr_system: fixed(r.bin()?, "mr_system")?,
            mr_aggregated: fixed(r.bin()?, "mr_aggregated")?,
            os_image_hash: r.bin()?.to_vec(),
            key_provider_info: r.bin()?.to_vec(),
            init_script_hashes: Vec::new(),
        };
        if len == 9 {
            let at = r.pos;
            if r.peek()? == 0xc0 {
                r.pos += 1; // nil: not bound
            } else {
                let n = r.array_len()?;
                if n > MAX_INIT_SCRIPTS {
                    return Err(AppInfoDecodeError::Type {
                        at,
                        expected: "at most 5 init-script hashes",
                    });
                }
                for _ in 0..n {
                    info.init_script_hashes
                        .push(fixed(r.bin()?, "init_script_hashes")?);
                }
            }
        }
        if r.pos != bytes.len() {
            return Err(AppInfoDecodeError::Trailing(bytes.len() - r.pos));
        }
        Ok(info)
    }
}

fn fixed<const N: usize>(bytes: &[u8], field: &'static str) -> Result<[u8; N], AppInfoDecodeError> {
    bytes.try_into().map_err(|_| AppInfoDecodeError::Length {
        field,
        got: bytes.len(),
        expected: N,
    })
}

/// msgpack `bin` of `bytes`.
fn bin(out: &mut Vec<u8>, bytes: &[u8]) {
    match u8::try_from(bytes.len()) {
        Ok(len) => out.extend_from_slice(&[0xc4, len]),
        Err(_) => match u16::try_from(bytes.len()) {
            Ok(len) => {
                out.push(0xc5);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Err(_) => {
                out.push(0xc6);
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
            }
        },
    }
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AppInfoDecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(AppInfoDecodeError::Truncated(self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn peek(&self) -> Result<u8, AppInfoDecodeError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(AppInfoDecodeError::Truncated(self.pos))
    }

    fn be(&mut self, n: usize) -> Result<usize, AppInfoDecodeError> {
        let mut value = 0usize;
        for b in self.take(n)? {
            value = (value << 8) | usize::from(*b);
        }
        Ok(value)
    }

    fn array_len(&mut self) -> Result<usize, AppInfoDecodeError> {
        let at = self.pos;
        match self.take(1)?[0] {
            b @ 0x90..=0x9f => Ok(usize::from(b & 0x0f)),
            0xdc => self.be(2),
            _ => Err(AppInfoDecodeError::Type {
                at,
                expected: "array",
            }),
        }
    }

    /// A `bin` value.
    fn bin(&mut self) -> Result<&'a [u8], AppInfoDecodeError> {
        let at = self.pos;
        let n = match self.take(1)?[0] {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => {
                return Err(AppInfoDecodeError::Type {
                    at,
                    expected: "bin",
                });
            }
        };
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CertAppInfo {
        CertAppInfo {
            app_id: vec![1; 20],
            compose_hash: vec![2; 32],
            instance_id: Vec::new(),
            device_id: vec![5; 32],
            mr_system: [4; 32],
            mr_aggregated: [3; 32],
            os_image_hash: vec![6; 32],
            key_provider_info: br#"{"name":"none","id":""}"#.to_vec(),
            init_script_hashes: Vec::new(),
        }
    }

    #[test]
    fn encodes_upstreams_nine_element_array() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], 0x99);
        assert_eq!(&bytes[1..3], &[0xc4, 20]);
        assert_eq!(&bytes[3..23], &[1; 20]);
        assert_eq!(&bytes[23..25], &[0xc4, 32]);
        // instance_id is empty: a zero-length bin.
        assert_eq!(&bytes[57..59], &[0xc4, 0]);
        // No init scripts: an empty array, not nil.
        assert_eq!(*bytes.last().unwrap(), 0x90);
        let mut long = Vec::new();
        bin(&mut long, &[0; 300]);
        assert_eq!(&long[..3], &[0xc5, 1, 44]);
    }

    #[test]
    fn round_trips_and_reads_the_eight_element_form() {
        let mut info = sample();
        info.init_script_hashes = vec![[7; 32], [8; 32]];
        assert_eq!(CertAppInfo::decode(&info.encode()).unwrap(), info);

        let mut eight = sample().encode();
        eight[0] = 0x98;
        eight.pop();
        assert_eq!(CertAppInfo::decode(&eight).unwrap(), sample());
    }

    #[test]
    fn malformed_bytes_are_named_errors() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(CertAppInfo::decode(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            CertAppInfo::decode(&extra).unwrap_err(),
            AppInfoDecodeError::Trailing(1)
        );
        let mut short_mr = sample().encode();
        // mr_system's bin header is at 1 + (2+20) + (2+32) + (2+0) + (2+32).
        short_mr[93] = 31;
        assert!(CertAppInfo::decode(&short_mr).is_err());
    }
}
