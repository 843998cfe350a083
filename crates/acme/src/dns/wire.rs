//! One DNS request/response over TCP, TSIG-signed when a key is given.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{DnsError, TsigKey};

/// How far apart the server's and our clocks may be (RFC 8945 §10 suggests 300 s).
const TSIG_FUDGE: u16 = 300;

/// A random message id: DNS over TCP has no spoofing window, but ids cost nothing.
pub(super) fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // An RNG failure leaves id 0, which is still a valid id.
    let _ = SystemRandom::new().fill(&mut id);
    u16::from_be_bytes(id)
}

/// Sends `message` to `server` over TCP and returns the checked response.
///
/// TCP rather than UDP: updates and CAA answers with account URIs are large,
/// the primary always serves TCP, and there is no truncation to retry.
pub(super) async fn exchange(
    server: SocketAddr,
    mut message: Message,
    tsig: Option<&TsigKey>,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let mut verifier = match tsig {
        Some(key) => {
            let name = Name::from_ascii(key.name()).map_err(|source| DnsError::InvalidName {
                name: key.name().to_string(),
                source,
            })?;
            // hickory keeps its own copy of the secret for the signer's lifetime
            // (this call); it is not wiped, but lives no longer than the exchange.
            let signer = TSigner::new(
                key.secret().to_vec(),
                key.algorithm().to_hickory(),
                name,
                TSIG_FUDGE,
            )
            .map_err(|err| DnsError::Proto(err.to_string().into()))?;
            message
                .finalize(&signer, unix_now())
                .map_err(DnsError::Proto)?
        }
        None => None,
    };
    let request = message.to_vec().map_err(DnsError::Proto)?;
    let response = tokio::time::timeout(timeout, send_tcp(server, &request))
        .await
        .map_err(|_| DnsError::Timeout {
            server,
            after: timeout,
        })?
        .map_err(|source| DnsError::Io { server, source })?;
    let parsed = Message::from_vec(&response).map_err(DnsError::Proto)?;
    if parsed.id() != message.id() {
        return Err(DnsError::IdMismatch { server });
    }

    // A TSIG error (BADSIG, BADKEY, BADTIME) comes with NOTAUTH and an
    // unsigned TSIG record (RFC 8945 §5.3.2): name it before anything else.
    if let Some(error) = parsed.signature().iter().find_map(tsig_error) {
        return Err(rcode_error(server, error.into()));
    }
    let rcode = parsed.response_code();
    // NXDOMAIN answers a query (no such name, so no records); to an update it
    // is a failed prerequisite.
    let answered = rcode == ResponseCode::NoError
        || (rcode == ResponseCode::NXDomain && parsed.op_code() == OpCode::Query);
    if !answered {
        // Not verified: a forged error can only make us fail, which anyone
        // on the path could do anyway by dropping packets.
        return Err(rcode_error(server, rcode));
    }
    if let Some(verify) = verifier.as_mut() {
        verify(&response).map_err(|source| DnsError::ResponseSignature { server, source })?;
    }
    Ok(parsed)
}

async fn send_tcp(server: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(request.len())
        .map_err(|_| std::io::Error::other("DNS message longer than 65535 bytes"))?;
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // TSIG time is 48-bit; hickory takes 32 bits, enough until 2106.
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The Error field of a TSIG record, when it is not zero.
///
/// hickory-proto 0.25 keeps the field private, so read it back from the
/// record's wire form: algorithm name, time (48 bits), fudge, MAC size, MAC,
/// original id, error.
fn tsig_error(record: &Record) -> Option<u16> {
    let RData::DNSSEC(DNSSECRData::TSIG(tsig)) = record.data() else {
        return None;
    };
    let mut wire = Vec::new();
    tsig.emit(&mut BinEncoder::new(&mut wire)).ok()?;
    let mut at = 0;
    loop {
        let label = usize::from(*wire.get(at)?);
        if label == 0 {
            at += 1;
            break;
        }
        at += 1 + label;
    }
    at += 6 + 2;
    let mac_len = usize::from(u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]));
    at += 2 + mac_len + 2;
    let error = u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]);
    (error != 0).then_some(error)
}

fn rcode_error(server: SocketAddr, rcode: ResponseCode) -> DnsError {
    match rcode {
        ResponseCode::Refused => DnsError::Refused { server },
        ResponseCode::NotAuth => DnsError::NotAuth { server },
        ResponseCode::BADSIG => DnsError::BadSig { server },
        ResponseCode::BADKEY => DnsError::BadKey { server },
        ResponseCode::BADTIME => DnsError::BadTime { server },
        ResponseCode::YXDomain
        | ResponseCode::YXRRSet
        | ResponseCode::NXDomain
        | ResponseCode::NXRRSet => DnsError::PrerequisiteFailed {
            server,
            rcode: rcode.to_str().to_string(),
        },
        other => DnsError::Rcode {
            server,
            rcode: other.to_str().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::dnssec::rdata::tsig::{TSIG, TsigAlgorithm, make_tsig_record};

    use super::*;

    #[test]
    fn the_tsig_error_field_is_read_back() {
        let name = Name::from_ascii("key.example.").unwrap();
        for (mac, error) in [(vec![], 16), (vec![1, 2, 3], 18), (vec![9; 32], 0)] {
            let tsig = TSIG::new(TsigAlgorithm::HmacSha256, 1, 300, mac, 7, error, vec![]);
            let record = make_tsig_record(name.clone(), tsig);
            assert_eq!(tsig_error(&record), (error != 0).then_some(error));
        }
    }

    #[test]
    fn response_codes_map_to_named_errors() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        assert!(matches!(
            rcode_error(server, ResponseCode::BADSIG),
            DnsError::BadSig { .. }
        ));
        assert!(matches!(
            rcode_error(server, 17u16.into()),
            DnsError::BadKey { .. }
        ));
        assert!(matches!(
            rcode_error(server, ResponseCode::NotAuth),
            DnsError::NotAuth { .. }
        ));
        assert!(matches!(
            rcode_error(server, ResponseCode::Refused),
            DnsError::Refused { .. }
        ));
        assert!(matches!(
            rcode_error(server, ResponseCode::NXRRSet),
            DnsError::PrerequisiteFailed { .. }
        ));
        assert!(matches!(
            rcode_error(server, ResponseCode::ServFail),
            DnsError::Rcode { .. }
        ));
    }
}
