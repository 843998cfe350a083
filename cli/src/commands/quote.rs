//! `dstack quote verify|show`: check a TDX/SGX quote against collateral and
//! replay an event log against its RTMRs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use dstack_attest::eventlog::{
    check_replay, parse_ccel, parse_event_log_json, parse_runtime_log, verify_runtime_digests,
};
use dstack_attest::{
    Collateral, Event, Policy, Quote, QuoteVerifier, Report, Rtmrs, RuntimeEvent, TcbStatus,
    VerifiedQuote, VerifyError,
};
use serde_json::json;

use super::{Failure, error_chain};

/// Quote commands.
#[derive(Debug, Subcommand)]
pub(crate) enum QuoteCommand {
    /// Verify a quote's signatures, certificate chain and TCB, and replay an event log.
    Verify(VerifyArgs),
    /// Print a quote's fields without verifying it.
    Show(ShowArgs),
}

/// Arguments of `dstack quote verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The quote: raw bytes, hex text, or a /GetQuote JSON response ("-" for stdin).
    quote: PathBuf,
    /// Collateral JSON (dcap-qvl QuoteCollateralV3) for offline verification.
    #[arg(long, conflicts_with = "pccs")]
    collateral: Option<PathBuf>,
    /// Fetch collateral from this PCCS (or Intel PCS) base URL.
    #[arg(long, value_name = "URL")]
    pccs: Option<String>,
    /// Event log to replay: dstack JSON (array, or a /GetQuote response) or a binary CCEL table.
    #[arg(long, value_name = "FILE")]
    event_log: Option<PathBuf>,
    /// Trust this root CA (PEM or DER) instead of Intel's, e.g. a simulated TEE's root.
    #[arg(long, value_name = "FILE")]
    root: Option<PathBuf>,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Accept only these TCB statuses (repeatable; default: UpToDate, SWHardeningNeeded,
    /// ConfigurationNeeded, ConfigurationAndSWHardeningNeeded).
    #[arg(long = "accept", value_name = "STATUS")]
    accept: Vec<String>,
    /// Accept debug TDs and enclaves.
    #[arg(long)]
    allow_debug: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dstack quote show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The quote: raw bytes, hex text, or a /GetQuote JSON response ("-" for stdin).
    quote: PathBuf,
    /// Print the parsed quote as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: QuoteCommand) -> Result<(), Failure> {
    match cmd {
        QuoteCommand::Verify(args) => verify(args),
        QuoteCommand::Show(args) => show(args),
    }
}

/// What the quote file held: the quote, and an event log if it was a /GetQuote response.
pub(crate) struct QuoteInput {
    pub(crate) quote: Vec<u8>,
    pub(crate) event_log: Option<Vec<Event>>,
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn decode_hex_text(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    hex::decode(t).ok()
}

/// Reads a quote file: raw bytes, hex text, or a /GetQuote JSON response.
pub(crate) fn read_quote(path: &Path) -> anyhow::Result<QuoteInput> {
    let bytes = read_input(path)?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            let value: serde_json::Value =
                serde_json::from_str(text).context("quote file is JSON but not valid")?;
            let quote_hex = value
                .get("quote")
                .and_then(|q| q.as_str())
                .context("JSON quote file has no \"quote\" string field")?;
            let quote = decode_hex_text(quote_hex).context("\"quote\" is not hex")?;
            let event_log = match value.get("event_log") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(
                    parse_event_log_json(s).context("\"event_log\" is not a dstack event log")?,
                ),
                Some(v @ serde_json::Value::Array(_)) => Some(
                    parse_event_log_json(&v.to_string())
                        .context("\"event_log\" is not a dstack event log")?,
                ),
                _ => None,
            };
            return Ok(QuoteInput { quote, event_log });
        }
        if let Some(quote) = decode_hex_text(text) {
            return Ok(QuoteInput {
                quote,
                event_log: None,
            });
        }
    }
    Ok(QuoteInput {
        quote: bytes,
        event_log: None,
    })
}

/// Reads an event log: dstack JSON (an array, or a /GetQuote response), the
/// guest's runtime log (`runtime_events.log`, one JSON object a line), or a
/// binary CCEL table.
pub(crate) fn read_event_log(path: &Path) -> anyhow::Result<Vec<Event>> {
    let bytes = read_input(path)?;
    let text = std::str::from_utf8(&bytes).ok().map(str::trim_start);
    match text {
        Some(t) if t.starts_with('[') => {
            Ok(parse_event_log_json(t).context("event log is not a dstack JSON event log")?)
        }
        Some(t) if t.starts_with('{') => {
            let value: Option<serde_json::Value> = serde_json::from_str(t).ok();
            let Some(log) = value.as_ref().and_then(|v| v.get("event_log")) else {
                // Not a /GetQuote response: the guest's runtime log, or nothing we know.
                return parse_runtime_log(t)
                    .map(|events| events.iter().map(RuntimeEvent::to_event).collect())
                    .context(
                        "event log is neither a /GetQuote response (no \"event_log\" field) nor a runtime event log",
                    );
            };
            let log_text = match log {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok(parse_event_log_json(&log_text)
                .context("\"event_log\" is not a dstack event log")?)
        }
        _ => Ok(parse_ccel(&bytes).context("event log is neither JSON nor a CCEL table")?),
    }
}

pub(crate) fn read_root(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_input(path)?;
    dstack_ra_tls::certificate_der(&bytes).context("root certificate PEM is not valid base64")
}

fn parse_time(text: &str) -> anyhow::Result<SystemTime> {
    let t = DateTime::parse_from_rfc3339(text).with_context(|| {
        format!("--at {text:?} is not an RFC 3339 time (e.g. 2025-06-20T00:00:00Z)")
    })?;
    Ok(t.into())
}

/// How a quote is checked: the root trusted, where collateral comes from,
/// the time, and the TCB policy. `quote verify` and `verify` each build one
/// from their flags and share everything after that.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    /// A root CA file to trust instead of Intel's (e.g. a sim TEE's).
    pub(crate) root: Option<PathBuf>,
    /// Offline collateral (dcap-qvl QuoteCollateralV3 JSON).
    pub(crate) collateral: Option<PathBuf>,
    /// A PCCS / Intel PCS base URL to fetch collateral from.
    pub(crate) pccs: Option<String>,
    /// Verify as of this RFC 3339 time instead of now.
    pub(crate) at: Option<String>,
    /// Accepted TCB status names (empty: the default policy's).
    pub(crate) accept: Vec<String>,
    /// Accept debug TDs and enclaves.
    pub(crate) allow_debug: bool,
}

impl Trust {
    /// The verifier: the trusted root and the acceptance policy.
    pub(crate) fn verifier(&self) -> anyhow::Result<QuoteVerifier> {
        let verifier = match &self.root {
            Some(path) => QuoteVerifier::new(read_root(path)?),
            None => QuoteVerifier::intel(),
        };
        Ok(verifier.with_policy(self.policy()?))
    }

    fn policy(&self) -> anyhow::Result<Policy> {
        let mut policy = Policy::default();
        if !self.accept.is_empty() {
            policy.accepted_statuses = self
                .accept
                .iter()
                .map(|name| {
                    TcbStatus::from_name(name).with_context(|| {
                        let known: Vec<_> = TcbStatus::ALL.iter().map(|s| s.as_str()).collect();
                        format!("unknown TCB status {name:?} (one of {})", known.join(", "))
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        policy.allow_debug = self.allow_debug;
        Ok(policy)
    }

    /// The verification time: `at`, or now.
    pub(crate) fn time(&self) -> anyhow::Result<SystemTime> {
        match &self.at {
            Some(text) => parse_time(text),
            None => Ok(SystemTime::now()),
        }
    }

    /// Collateral for `quote`: the file, else fetched from the PCCS, else
    /// what the evidence carried in-band (an RA-TLS certificate's).
    pub(crate) fn collateral(
        &self,
        quote: &[u8],
        in_band: Option<Collateral>,
    ) -> anyhow::Result<Collateral> {
        match (&self.collateral, &self.pccs, in_band) {
            (Some(path), _, _) => Ok(Collateral::load(path)?),
            (None, Some(url), _) => fetch_collateral(url, quote),
            (None, None, Some(carried)) => Ok(carried),
            (None, None, None) => bail!("give --collateral FILE or --pccs URL"),
        }
    }

    /// A one-line reason for `err`, with the flag that would help.
    pub(crate) fn rejection(&self, err: &VerifyError) -> String {
        let mut reason = error_chain(err);
        if matches!(err, VerifyError::CollateralExpired { .. }) && self.at.is_none() {
            reason.push_str(" (--at TIME verifies at another time)");
        }
        reason
    }
}

fn fetch_collateral(url: &str, quote: &[u8]) -> anyhow::Result<Collateral> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(Collateral::fetch(url, quote))?)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The outcome of replaying an event log against the quoted RTMRs.
enum Replay {
    NotRequested,
    Matched(usize),
    Failed(String),
}

fn replay(events: Option<Vec<Event>>, verified: &VerifiedQuote) -> Replay {
    let Some(mut events) = events else {
        return Replay::NotRequested;
    };
    let Some(td) = verified.quote.td_report() else {
        return Replay::Failed("the quote is not a TDX quote; it has no RTMRs".into());
    };
    if let Err(e) = verify_runtime_digests(&mut events) {
        return Replay::Failed(error_chain(&e));
    }
    match check_replay(&events, &Rtmrs(td.rtmr)) {
        Ok(_) => Replay::Matched(events.len()),
        Err(mismatch) => Replay::Failed(mismatch.to_string()),
    }
}

fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let input = read_quote(&args.quote)?;
    let events = match &args.event_log {
        Some(path) => Some(read_event_log(path)?),
        None => input.event_log.clone(),
    };
    let trust = Trust {
        root: args.root.clone(),
        collateral: args.collateral.clone(),
        pccs: args.pccs.clone(),
        at: args.at.clone(),
        accept: args.accept.clone(),
        allow_debug: args.allow_debug,
    };
    let collateral = trust.collateral(&input.quote, None)?;
    let at = trust.time()?;
    let verifier = trust.verifier()?;
    let validity = collateral.validity().ok();

    let verified = match verifier.verify_at(&input.quote, &collateral, at) {
        Ok(v) => v,
        Err(err) => {
            let reason = trust.rejection(&err);
            if args.json {
                println!("{}", json!({ "ok": false, "error": reason }));
            }
            return Err(Failure::Rejected(reason));
        }
    };
    let replay = replay(events, &verified);
    if args.json {
        print_json(
            &verified,
            &replay,
            validity.map(|v| (v.issued, v.next_update)),
        );
    } else {
        print_human(
            &verified,
            &replay,
            validity.map(|v| (v.issued, v.next_update)),
        );
    }
    match replay {
        Replay::Failed(reason) => Err(Failure::Rejected(format!(
            "event log replay failed: {reason}"
        ))),
        _ => Ok(()),
    }
}

fn report_kind(quote: &Quote) -> String {
    match &quote.report {
        Report::Td(td) if td.mr_service_td.is_some() => {
            format!("TDX v{} (TD report 1.5)", quote.header.version)
        }
        Report::Td(_) => format!("TDX v{} (TD report 1.0)", quote.header.version),
        Report::Sgx(_) => format!("SGX v{}", quote.header.version),
    }
}

fn print_human(v: &VerifiedQuote, replay: &Replay, window: Option<(DateTime<Utc>, DateTime<Utc>)>) {
    println!("quote:         {}", report_kind(&v.quote));
    println!("tcb status:    {}", v.status);
    let advisories = if v.advisory_ids.is_empty() {
        "none".to_string()
    } else {
        v.advisory_ids.join(", ")
    };
    println!("advisories:    {advisories}");
    match window {
        Some((from, until)) => println!(
            "verified at:   {} (collateral valid {} .. {})",
            rfc3339(v.verified_at),
            rfc3339(from),
            rfc3339(until)
        ),
        None => println!("verified at:   {}", rfc3339(v.verified_at)),
    }
    match &v.quote.report {
        Report::Td(td) => {
            println!("mrtd:          {}", hex::encode(td.mr_td));
            for (i, r) in td.rtmr.iter().enumerate() {
                println!("rtmr{i}:         {}", hex::encode(r));
            }
            println!("mr_config_id:  {}", hex::encode(td.mr_config_id));
            println!(
                "debug:         {}",
                if td.is_debug() { "yes" } else { "no" }
            );
        }
        Report::Sgx(sgx) => {
            println!("mr_enclave:    {}", hex::encode(sgx.mr_enclave));
            println!("mr_signer:     {}", hex::encode(sgx.mr_signer));
            println!("isv_prod_id:   {}", sgx.isv_prod_id);
            println!("isv_svn:       {}", sgx.isv_svn);
            println!(
                "debug:         {}",
                if sgx.is_debug() { "yes" } else { "no" }
            );
        }
    }
    println!("report_data:   {}", hex::encode(v.quote.report_data()));
    match replay {
        Replay::NotRequested => println!("event log:     not given (use --event-log)"),
        Replay::Matched(n) => println!("event log:     {n} events replay to RTMR0-3: match"),
        Replay::Failed(reason) => println!("event log:     MISMATCH: {reason}"),
    }
}

fn print_json(v: &VerifiedQuote, replay: &Replay, window: Option<(DateTime<Utc>, DateTime<Utc>)>) {
    let mut out = json!({
        "ok": !matches!(replay, Replay::Failed(_)),
        "tee": v.tee,
        "quote_version": v.quote.header.version,
        "tcb_status": v.status.as_str(),
        "advisory_ids": v.advisory_ids,
        "verified_at": rfc3339(v.verified_at),
        "report_data": hex::encode(v.quote.report_data()),
        "report": v.quote.report,
    });
    if let Some((from, until)) = window {
        out["collateral_valid_from"] = json!(rfc3339(from));
        out["collateral_valid_until"] = json!(rfc3339(until));
    }
    if let Report::Td(td) = &v.quote.report {
        out["mrtd"] = json!(hex::encode(td.mr_td));
        for (i, r) in td.rtmr.iter().enumerate() {
            out[format!("rtmr{i}")] = json!(hex::encode(r));
        }
    }
    out["replay"] = match replay {
        Replay::NotRequested => json!(null),
        Replay::Matched(n) => json!({ "result": "match", "events": n }),
        Replay::Failed(reason) => json!({ "result": "mismatch", "error": reason }),
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

fn show(args: ShowArgs) -> Result<(), Failure> {
    let input = read_quote(&args.quote)?;
    let quote = match Quote::parse(&input.quote) {
        Ok(q) => q,
        Err(e) => bail_input(e)?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&quote).unwrap_or_default()
        );
        return Ok(());
    }
    println!("quote:         {}", report_kind(&quote));
    match &quote.report {
        Report::Td(td) => {
            println!("mrtd:          {}", hex::encode(td.mr_td));
            for (i, r) in td.rtmr.iter().enumerate() {
                println!("rtmr{i}:         {}", hex::encode(r));
            }
            println!("mr_config_id:  {}", hex::encode(td.mr_config_id));
            println!("td_attributes: {}", hex::encode(td.td_attributes));
        }
        Report::Sgx(sgx) => {
            println!("mr_enclave:    {}", hex::encode(sgx.mr_enclave));
            println!("mr_signer:     {}", hex::encode(sgx.mr_signer));
        }
    }
    println!("report_data:   {}", hex::encode(quote.report_data()));
    let chain = quote
        .signature
        .pck_chain_pem()
        .map_or(0, |p| p.matches("BEGIN CERTIFICATE").count());
    println!("pck chain:     {chain} certificates");
    Ok(())
}

fn bail_input<T>(e: dstack_attest::QuoteParseError) -> anyhow::Result<T> {
    bail!("{}", error_chain(&e))
}
