//! The subset of SCALE (parity-scale-codec) that dstack's wire formats use:
//! little-endian integers, compact lengths, length-prefixed bytes and
//! strings, `Option` as a `0x00`/`0x01` tag. Upstream encodes its
//! `VersionedAttestation` and `CertSigningRequestV2` with it; both are
//! written and read here and nowhere else.

/// Why SCALE bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScaleError {
    /// The bytes end early (or a length claims more than there is).
    #[error("SCALE input truncated at byte {0}")]
    Truncated(usize),
    /// A string field is not UTF-8.
    #[error("SCALE string at byte {0} is not UTF-8")]
    Utf8(usize),
    /// A tag byte (bool, `Option`) is neither 0 nor 1.
    #[error("SCALE tag at byte {0} is neither 0 nor 1")]
    Tag(usize),
}

/// Appends SCALE values to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
        }
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// A bool: one byte, 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.out.push(u8::from(v));
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Bytes as they are, with no length (fixed-size arrays, a trailing field).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// A compact integer (a length or count).
    // Each cast is of a value the branch's range check bounds.
    #[allow(clippy::cast_possible_truncation)]
    pub fn compact(&mut self, n: usize) {
        let n = n as u64;
        if n < 1 << 6 {
            self.out.push((n << 2) as u8);
        } else if n < 1 << 14 {
            self.out
                .extend_from_slice(&(((n << 2) | 1) as u16).to_le_bytes());
        } else if n < 1 << 30 {
            self.out
                .extend_from_slice(&(((n << 2) | 2) as u32).to_le_bytes());
        } else {
            let le = n.to_le_bytes();
            let len = le.iter().rposition(|&b| b != 0).map_or(1, |i| i + 1).max(4);
            self.out.push((((len - 4) as u8) << 2) | 3);
            self.out.extend_from_slice(&le[..len]);
        }
    }

    /// `Vec<u8>`: compact length, then the bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.compact(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    /// `String`: as its UTF-8 bytes.
    pub fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// `Option<T>`: `0x00`, or `0x01` and the value.
    pub fn option<T>(&mut self, value: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.out.push(0),
            Some(v) => {
                self.out.push(1);
                put(self, v);
            }
        }
    }
}

/// Reads SCALE values from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Where the next read starts.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    /// The next `n` bytes, as they are.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ScaleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(ScaleError::Truncated(self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// The rest of the input (a trailing field with no length).
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.remaining();
        self.pos = self.bytes.len();
        rest
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ScaleError> {
        Ok(self.take(1)?[0])
    }

    /// A bool (refused unless 0 or 1).
    pub fn bool(&mut self) -> Result<bool, ScaleError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ScaleError::Tag(at)),
        }
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, ScaleError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, ScaleError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A compact integer used as a length or count: one larger than the
    /// input is truncation, whatever it claims.
    pub fn compact(&mut self) -> Result<usize, ScaleError> {
        let at = self.pos;
        let first = self.u8()?;
        let value = match first & 3 {
            0 => u64::from(first >> 2),
            1 => u64::from(u16::from_le_bytes([first, self.u8()?]) >> 2),
            2 => {
                let rest = self.take(3)?;
                u64::from(u32::from_le_bytes([first, rest[0], rest[1], rest[2]]) >> 2)
            }
            _ => {
                let len = usize::from(first >> 2) + 4;
                if len > 8 {
                    return Err(ScaleError::Truncated(at));
                }
                let mut le = [0u8; 8];
                le[..len].copy_from_slice(self.take(len)?);
                u64::from_le_bytes(le)
            }
        };
        usize::try_from(value)
            .ok()
            .filter(|&v| v <= self.bytes.len())
            .ok_or(ScaleError::Truncated(at))
    }

    /// `Vec<u8>`.
    pub fn bytes(&mut self) -> Result<&'a [u8], ScaleError> {
        let n = self.compact()?;
        self.take(n)
    }

    /// `String`.
    pub fn string(&mut self) -> Result<String, ScaleError> {
        let at = self.pos;
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ScaleError::Utf8(at))
    }

    /// `Option<T>`.
    pub fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, ScaleError>,
    ) -> Result<Option<T>, ScaleError> {
        if self.bool()? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_encoding_matches_scale() {
        let cases: [(usize, &[u8]); 5] = [
            (0, &[0x00]),
            (1, &[0x04]),
            (63, &[0xfc]),
            (64, &[0x01, 0x01]),
            (16384, &[0x02, 0x00, 0x01, 0x00]),
        ];
        for (n, expected) in cases {
            let mut w = Writer::default();
            w.compact(n);
            assert_eq!(w.finish(), expected, "{n}");
            let input = [expected, &vec![0u8; n][..]].concat();
            assert_eq!(Reader::new(&input).compact().unwrap(), n);
        }
    }

    #[test]
    fn options_strings_and_integers_round_trip() {
        let mut w = Writer::default();
        w.option(Some("org"), |w, s| w.string(s));
        w.option(None::<u64>, |w, v| w.u64(v));
        w.option(Some(7u64), |w, v| w.u64(v));
        w.bool(true);
        w.u32(0x0102_0304);
        let bytes = w.finish();
        assert_eq!(
            hex::encode(&bytes),
            "010c6f7267000107000000000000000104030201",
            "SCALE: Some tag, compact length 3, bytes; None; Some, u64 LE; bool; u32 LE"
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(r.option(Reader::string).unwrap().as_deref(), Some("org"));
        assert_eq!(r.option(Reader::u64).unwrap(), None);
        assert_eq!(r.option(Reader::u64).unwrap(), Some(7));
        assert!(r.bool().unwrap());
        assert_eq!(r.u32().unwrap(), 0x0102_0304);
        assert!(r.remaining().is_empty());
    }

    #[test]
    fn malformed_input_is_named() {
        assert_eq!(Reader::new(&[2]).bool(), Err(ScaleError::Tag(0)));
        assert_eq!(
            Reader::new(&[0x08, b'a']).bytes(),
            Err(ScaleError::Truncated(1))
        );
        assert_eq!(
            Reader::new(&[0x10, b'a']).bytes(),
            Err(ScaleError::Truncated(0))
        );
        assert_eq!(
            Reader::new(&[0x04, 0xff]).string(),
            Err(ScaleError::Utf8(0))
        );
        assert_eq!(Reader::new(&[1, 2]).u64(), Err(ScaleError::Truncated(0)));
    }
}
