//! Getting the evidence: a quote and event log from files, or a live app's
//! RA-TLS certificate over TLS. The server's certificate is accepted
//! whatever signs it: the attestation inside it is what gets checked.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use dstack_attest::{Collateral, Event, Quote, QuoteVerifier};
use dstack_ra_tls::{RaTlsError, decode_certificate, report_data_for_spki};
use sha2::{Digest, Sha256};

use super::checks::{Binding, Evidence, QuoteTrust};
use super::finding::BindingSource;
use crate::commands::quote::{read_event_log, read_quote};

/// How long connecting and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The evidence, not yet checked.
#[derive(Debug)]
pub(crate) struct Gathered {
    /// The quote bytes.
    pub(crate) quote: Vec<u8>,
    /// The event log.
    pub(crate) events: Vec<Event>,
    /// report_data the quote must bind.
    pub(crate) binding: Option<Binding>,
    /// Collateral that came with the evidence (an RA-TLS certificate's).
    pub(crate) collateral: Option<Collateral>,
    /// Where it came from, for the report.
    pub(crate) source: String,
}

/// Parses the quote and verifies it (`verifier`'s root and policy, with
/// `collateral`, at `at`): the checker's input. A refused quote is a
/// finding, not an error; an unreadable or non-TDX one is bad input.
pub(crate) fn appraise(
    gathered: &Gathered,
    verifier: &QuoteVerifier,
    collateral: &Collateral,
    at: SystemTime,
    anchor: String,
) -> anyhow::Result<Evidence> {
    let parsed = Quote::parse(&gathered.quote).context("the quote is malformed")?;
    let report = parsed
        .td_report()
        .cloned()
        .context("the quote is an SGX quote; dstack apps run in TDX")?;
    let trust = verifier
        .verify_at(&gathered.quote, collateral, at)
        .map(|v| QuoteTrust {
            status: v.status,
            advisory_ids: v.advisory_ids,
        });
    Ok(Evidence {
        report,
        trust,
        anchor,
        events: gathered.events.clone(),
        binding: gathered.binding,
    })
}

/// `--report-data HEX`: up to 64 bytes, zero-padded as /GetQuote pads them.
pub(crate) fn parse_report_data(text: &str) -> anyhow::Result<[u8; 64]> {
    let t = text.trim();
    let bytes =
        hex::decode(t.strip_prefix("0x").unwrap_or(t)).context("--report-data is not hex")?;
    if bytes.len() > 64 {
        bail!(
            "--report-data is {} bytes; a quote binds at most 64",
            bytes.len()
        );
    }
    let mut padded = [0u8; 64];
    padded[..bytes.len()].copy_from_slice(&bytes);
    Ok(padded)
}

/// A quote file (raw, hex, or a /GetQuote response) and an event log file
/// (optional when the quote file is a /GetQuote response carrying one).
pub(crate) fn from_files(
    quote: &Path,
    event_log: Option<&Path>,
    report_data: Option<[u8; 64]>,
) -> anyhow::Result<Gathered> {
    let input = read_quote(quote)?;
    let (events, log_source) = match (event_log, input.event_log) {
        (Some(path), _) => (
            read_event_log(path)?,
            format!("event log {}", path.display()),
        ),
        (None, Some(events)) => (events, "with its event_log".to_owned()),
        (None, None) => bail!(
            "{} carries no event log: give --event-log FILE",
            quote.display()
        ),
    };
    Ok(Gathered {
        quote: input.quote,
        events,
        binding: report_data.map(|report_data| Binding {
            report_data,
            source: BindingSource::Given,
        }),
        collateral: None,
        source: format!("quote {}, {log_source}", quote.display()),
    })
}

/// The evidence in an RA-TLS certificate: its quote must bind its key.
pub(crate) fn from_certificate(cert_der: &[u8], source: &str) -> anyhow::Result<Gathered> {
    let cert = decode_certificate(cert_der).map_err(|err| match err {
        RaTlsError::MissingQuote => anyhow::anyhow!(
            "{source}: the server's certificate carries no attestation (dstack's .8, or legacy .1): it is not an RA-TLS certificate (is TLS terminated by a gateway? use the app's TLS-passthrough address)"
        ),
        other => anyhow::Error::new(other).context(format!("{source}: cannot read the certificate's attestation")),
    })?;
    let collateral = cert.collateral()?;
    let extension = if cert.stripped { ".8" } else { "legacy .1/.2" };
    Ok(Gathered {
        binding: Some(Binding {
            report_data: report_data_for_spki(&cert.spki),
            source: BindingSource::Certificate,
        }),
        quote: cert.quote,
        events: cert.event_log,
        collateral,
        source: format!(
            "{source}: RA-TLS certificate sha256 {} (attestation in {extension})",
            hex::encode(Sha256::digest(cert_der))
        ),
    })
}

/// `https://HOST[:PORT][/...]` as (host, authority).
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("--url {url:?} must start with https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        bail!("--url {url:?} names no host");
    }
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .with_context(|| format!("--url {url:?}: unclosed [ in the host"))?;
            (host.to_owned(), after.strip_prefix(':').unwrap_or("443"))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port),
            None => (authority.to_owned(), "443"),
        },
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("--url {url:?}: {port:?} is not a port"))?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((host, authority))
}

/// Connects to `url` and returns the server's leaf certificate (DER). The
/// handshake proves the server holds that certificate's key; nothing else
/// about the certificate is trusted yet.
pub(crate) fn fetch_certificate(url: &str) -> anyhow::Result<Vec<u8>> {
    let (host, authority) = parse_url(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let config = dstack_ra_tls::unverified_client_config()?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("--url {url:?}: {host:?} is not a host name"))?;
    runtime.block_on(async {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .with_context(|| format!("cannot connect to {authority}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {authority} failed"))?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref().to_vec())
                .with_context(|| format!("{authority} presented no certificate"))?;
            anyhow::Ok(leaf)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .with_context(|| {
                format!("{authority} did not complete a TLS handshake in {CONNECT_TIMEOUT:?}")
            })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_and_port() {
        let parse = |u| parse_url(u).unwrap();
        assert_eq!(
            parse("https://10.0.2.2:8443"),
            ("10.0.2.2".into(), "10.0.2.2:8443".into())
        );
        assert_eq!(
            parse("https://app-443s.example.com/path?x"),
            (
                "app-443s.example.com".into(),
                "app-443s.example.com:443".into()
            )
        );
        assert_eq!(
            parse("https://[::1]:9000/"),
            ("::1".into(), "[::1]:9000".into())
        );
        assert!(parse_url("http://a:1").is_err());
        assert!(parse_url("https://a:port").is_err());
        assert!(parse_url("https:///x").is_err());
    }

    #[test]
    fn report_data_is_zero_padded() {
        let rd = parse_report_data("0xabcd").unwrap();
        assert_eq!(&rd[..2], &[0xab, 0xcd]);
        assert!(rd[2..].iter().all(|b| *b == 0));
        assert!(parse_report_data(&"00".repeat(65)).is_err());
        assert!(parse_report_data("xyz").is_err());
    }
}
