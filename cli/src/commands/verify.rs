//! `dstack verify`: checks a live app (its RA-TLS certificate), or a quote
//! and its event log, against an OS image and a compose file, and explains
//! the first mismatch in plain words.
//!
//! The image gives MRTD and RTMR0-2 for the VM shape (`crate::predict`);
//! the compose file gives the RTMR3 events dstack measures at boot. The
//! checks run in this order, and the verdict is the first that fails:
//!
//! 1. `quote`: signature, certificate chain, collateral and TCB (dcap-qvl;
//!    Intel's root unless `--sim-root`);
//! 2. `report-data`: the quote binds the RA-TLS certificate's key
//!    (`--url`) or the `--report-data` given;
//! 3. `mrtd`, `rtmr0`, `rtmr1`, `rtmr2`: the image's prediction;
//! 4. `rtmr3`: the event log's RTMR3 events replay to the quote's RTMR3;
//! 5. `event-order`: the boot events come in dstack's order;
//! 6. `compose-hash`, `app-id`, `instance-id`, `key-provider`,
//!    `os-image-hash` (KMS mode): the events match the inputs;
//! 7. `mr-config-id`: the TD's mr_config_id, when set, names this app.
//!
//! Exit codes (the `Failure` the command returns, mapped by `main`):
//! 0 verified; 1 rejected (`Failure::Rejected`, the first finding); 2 bad
//! input or could not check (`Failure::BadInput`: unreadable files, no such
//! image, no collateral, unreachable server, not an RA-TLS certificate).
//!
//! The checks are pure (`checks`); files, the image directory and TLS stay
//! at the edge (`evidence`, `image`).

mod checks;
mod evidence;
mod finding;
mod image;
mod report;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::json;

use self::checks::{ComposeSettings, Expected, first_failure, run_checks};
use self::report::Subject;
use super::Failure;
use super::quote::Trust;
use crate::predict::{MachineArgs, VmShape, predict};

/// Help shown after the options.
const AFTER_HELP: &str = "\
Checks, in order (the first failure is the verdict): quote (signature, chain, TCB), \
report-data (binds the certificate key with --url, or --report-data), mrtd, rtmr0, rtmr1, \
rtmr2 (the image's prediction for the VM shape), rtmr3 (the event log replays to the quote), \
event-order, compose-hash, app-id, instance-id, key-provider, os-image-hash (KMS mode), \
mr-config-id.

Exit status: 0 verified; 1 rejected (the first mismatch, in words, on stderr); \
2 bad input or could not check (unreadable file, unknown image, no collateral, \
unreachable server).";

/// Arguments of `dstack verify`.
#[derive(Debug, Args)]
#[command(
    after_help = AFTER_HELP,
    group(ArgGroup::new("evidence").required(true).args(["quote", "url"]))
)]
pub(crate) struct VerifyArgs {
    /// The OS image: its directory, or its os_image_hash (digest.txt) or
    /// name among the images in $DSTACK_IMAGES_DIR (default: the
    /// supervisor's images directory).
    #[arg(long, value_name = "DIR|DIGEST")]
    image: String,
    /// The app-compose.json the app should run (its exact bytes are hashed).
    #[arg(long, value_name = "FILE")]
    compose: PathBuf,
    /// vCPUs the VM was given.
    #[arg(long, value_name = "N")]
    vcpu: u32,
    /// Memory the VM was given: MiB, or a size like 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    memory: String,
    /// The quote: raw bytes, hex, or a /GetQuote JSON response.
    #[arg(long, value_name = "FILE")]
    quote: Option<PathBuf>,
    /// The event log: dstack JSON (an array, or a /GetQuote response), the
    /// guest's runtime_events.log, or a CCEL table (default: the quote
    /// file's event_log).
    #[arg(long, value_name = "FILE", requires = "quote")]
    event_log: Option<PathBuf>,
    /// A live app: take the evidence from its RA-TLS certificate at
    /// https://HOST:PORT (any certificate is accepted for the connection;
    /// the attestation inside it is what is checked).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Trust this simulated TEE's root CA (PEM or DER) instead of Intel's:
    /// the only way simulated-TEE quotes verify.
    #[arg(long, value_name = "FILE")]
    sim_root: Option<PathBuf>,
    /// Collateral JSON (dcap-qvl QuoteCollateralV3) for offline verification
    /// (default with --url: the certificate's own, if it carries any).
    #[arg(long, value_name = "FILE", conflicts_with = "pccs")]
    collateral: Option<PathBuf>,
    /// Fetch collateral from this PCCS (or Intel PCS) base URL.
    #[arg(long, value_name = "URL")]
    pccs: Option<String>,
    /// The app-id the app must have (KMS/on-chain apps pin theirs; default:
    /// the first 20 bytes of the compose-hash).
    #[arg(long, value_name = "HEX")]
    app_id: Option<String>,
    /// The instance-id the app must have.
    #[arg(long, value_name = "HEX")]
    instance_id: Option<String>,
    /// With --quote: report_data the quote must bind (hex, up to 64 bytes,
    /// zero-padded), e.g. the nonce you asked it for.
    #[arg(long, value_name = "HEX", requires = "quote")]
    report_data: Option<String>,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Accept only these TCB statuses (repeatable; default: UpToDate,
    /// SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded).
    #[arg(long = "accept", value_name = "STATUS")]
    accept: Vec<String>,
    /// Print the verdict as JSON: every check with status, expected and
    /// actual values, and the first failure.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    machine: MachineArgs,
}

pub(crate) fn run(args: VerifyArgs) -> Result<(), Failure> {
    let json = args.json;
    let result = verify(args);
    if let (true, Err(Failure::BadInput(err))) = (json, &result) {
        let out = json!({ "verdict": "error", "error": format!("{err:#}") });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    result
}

fn id20(text: &str, flag: &str) -> anyhow::Result<[u8; 20]> {
    let t = text.trim();
    let bytes = hex::decode(t.strip_prefix("0x").unwrap_or(t))
        .with_context(|| format!("{flag} is not hex"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("{flag} is {} bytes, not 20", b.len()))
}

/// `--image`: an image directory, or an os_image_hash or name among the
/// images in `$DSTACK_IMAGES_DIR` (its files checked against its digest).
pub(crate) fn resolve_image(arg: &str) -> anyhow::Result<image::ImageRef> {
    image::resolve(arg, &image::images_dir())
}

fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let image = resolve_image(&args.image)?;
    let shape = VmShape {
        vcpus: args.vcpu,
        memory_mb: super::vm::parse_memory(&args.memory)?,
    };
    let prediction = predict(&image.dir, shape, &args.machine)
        .with_context(|| format!("cannot predict the registers of {}", image.dir.display()))?;
    let compose = std::fs::read(&args.compose)
        .with_context(|| format!("cannot read {}", args.compose.display()))?;
    let expected = Expected {
        settings: ComposeSettings::parse(&compose)?,
        compose,
        prediction,
        app_id: args
            .app_id
            .as_deref()
            .map(|t| id20(t, "--app-id"))
            .transpose()?,
        instance_id: args
            .instance_id
            .as_deref()
            .map(|t| id20(t, "--instance-id"))
            .transpose()?,
    };
    let report_data = args
        .report_data
        .as_deref()
        .map(evidence::parse_report_data)
        .transpose()?;
    let gathered = match (&args.quote, &args.url) {
        (Some(quote), _) => evidence::from_files(quote, args.event_log.as_deref(), report_data)?,
        (None, Some(url)) => evidence::from_certificate(&evidence::fetch_certificate(url)?, url)?,
        (None, None) => return Err(anyhow::anyhow!("give --quote FILE or --url URL").into()),
    };

    let trust = Trust {
        root: args.sim_root.clone(),
        collateral: args.collateral.clone(),
        pccs: args.pccs.clone(),
        at: args.at.clone(),
        accept: args.accept.clone(),
        allow_debug: false,
    };
    let collateral = trust.collateral(&gathered.quote, gathered.collateral.clone())?;
    let anchor = match &args.sim_root {
        Some(path) => format!("the root in {}", path.display()),
        None => "Intel's TDX root".to_owned(),
    };
    let evidence = evidence::appraise(
        &gathered,
        &trust.verifier()?,
        &collateral,
        trust.time()?,
        anchor,
    )?;

    let checks = run_checks(&evidence, &expected);
    let subject = Subject {
        image_dir: image.dir.display().to_string(),
        image_name: image.name,
        os_image_hash: image.os_image_hash,
        shape,
        evidence: gathered.source,
    };
    if args.json {
        let out = report::to_json(&subject, &checks);
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        report::print_human(&subject, &checks);
    }
    match first_failure(&checks) {
        None => Ok(()),
        Some(finding) => Err(Failure::Rejected(finding.to_string())),
    }
}
