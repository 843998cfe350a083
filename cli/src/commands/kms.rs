//! `dstack kms`: a KMS as its users see it.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Subcommand;
use dstack_attest::{Collateral, QuoteVerifier};
use dstack_kms_client::{ClientError, KmsClient, OnboardClient, bootstrap_report_data, check_pin};
use dstack_ra_tls::RaTlsVerifier;

use super::Failure;

/// KMS commands.
#[derive(Debug, Subcommand)]
pub(crate) enum KmsCommand {
    /// Show a KMS's identity: the root key apps pin as `key_provider_id`,
    /// its k256 public key (which signs app keys) and its metadata.
    Info(InfoArgs),
    /// Generate the root keys inside a new KMS (its onboarding endpoint,
    /// http://HOST:PORT), check the attestation that binds them, and let the
    /// KMS serve. One time only: a KMS with keys refuses.
    Bootstrap(BootstrapArgs),
    /// Make a new KMS a replica of a running one: it fetches the root keys
    /// over mutual RA-TLS, which the running KMS grants only if its KmsAuth
    /// allows the new KMS's measurements. Also migrates from an upstream
    /// dstack KMS (same GetKmsKey).
    Onboard(OnboardArgs),
    /// Give a new KMS an upstream dstack KMS's root keys (its cert dir:
    /// root-ca.key, root-k256.key, tmp-ca.key), so apps migrating keep
    /// their keys: sealed to a key the new KMS attests, checked first.
    Import(ImportArgs),
    /// Show what to register in KmsAuth for a KMS that is onboarding: its
    /// aggregated MR, device id and OS image hash.
    AttestationInfo(OnboardingArgs),
    /// End onboarding (after `bootstrap --no-finish` or `onboard --no-finish`).
    Finish(OnboardingArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct OnboardingArgs {
    /// The KMS's onboarding endpoint (http://HOST:PORT).
    url: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BootstrapArgs {
    /// The KMS's onboarding endpoint (http://HOST:PORT).
    url: String,
    /// The DNS name of the KMS's RPC certificate.
    #[arg(long)]
    domain: String,
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// Accept a KMS outside a TEE (a development KMS on a host): its keys
    /// come with no attestation.
    #[arg(long)]
    allow_unattested: bool,
    /// Stay in onboarding after bootstrapping (`dstack kms finish` later).
    #[arg(long)]
    no_finish: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// How the CLI checks a KMS's attestation.
#[derive(Debug, clap::Args)]
pub(crate) struct EvidenceArgs {
    /// Trust quotes under this root (PEM or DER) instead of Intel's, e.g.
    /// the simulated TEE's (`dstack-supervisor sim-root`).
    #[arg(long, value_name = "FILE")]
    root: Option<PathBuf>,
    /// Collateral JSON for the KMS's quote.
    #[arg(long, conflicts_with = "pccs")]
    collateral: Option<PathBuf>,
    /// Fetch the collateral from this PCCS (or Intel PCS).
    #[arg(long, value_name = "URL")]
    pccs: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The new KMS's onboarding endpoint (http://HOST:PORT).
    url: String,
    /// The upstream KMS's cert directory.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// Stay in onboarding afterwards (`dstack kms finish` later).
    #[arg(long)]
    no_finish: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct OnboardArgs {
    /// The new KMS's onboarding endpoint (http://HOST:PORT).
    url: String,
    /// The running KMS to copy the keys from (https://HOST:PORT).
    #[arg(long)]
    source: String,
    /// The DNS name of the new KMS's RPC certificate.
    #[arg(long)]
    domain: String,
    /// Stay in onboarding afterwards (`dstack kms finish` later).
    #[arg(long)]
    no_finish: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InfoArgs {
    /// The KMS (https://HOST:PORT).
    url: String,
    /// Refuse unless the KMS root is this SubjectPublicKeyInfo (hex), e.g.
    /// the `key_provider_id` an app pins.
    #[arg(long)]
    pin: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: KmsCommand) -> Result<(), Failure> {
    match cmd {
        KmsCommand::Info(args) => info(args).await,
        KmsCommand::Bootstrap(args) => bootstrap(args).await,
        KmsCommand::Onboard(args) => onboard(args).await,
        KmsCommand::Import(args) => import(args).await,
        KmsCommand::AttestationInfo(args) => attestation_info(args).await,
        KmsCommand::Finish(args) => {
            onboarding_client(&args.url)?
                .finish()
                .await
                .map_err(failed)?;
            println!("onboarding finished: the KMS now serves its API over HTTPS");
            Ok(())
        }
    }
}

fn failed(e: ClientError) -> Failure {
    Failure::Failed(super::error_chain(&e))
}

fn onboarding_client(url: &str) -> Result<OnboardClient, Failure> {
    OnboardClient::new(url).map_err(|e| Failure::BadInput(e.into()))
}

/// Checks a KMS's attestation over `report_data` as `evidence` says.
async fn verify_kms_attestation(
    evidence: &EvidenceArgs,
    attestation: &[u8],
    report_data: &[u8; 64],
    what: &str,
) -> Result<dstack_ra_tls::VerifiedPeer, Failure> {
    let verifier = match &evidence.root {
        Some(path) => QuoteVerifier::new(super::quote::read_root(path)?),
        None => QuoteVerifier::intel(),
    };
    let quote = dstack_attest::AttestationV0::from_bytes(attestation)
        .map_err(|e| Failure::Rejected(format!("the attestation does not decode: {e}")))?
        .quote;
    let collateral = match (&evidence.collateral, &evidence.pccs) {
        (Some(path), _) => Collateral::load(path).map_err(anyhow::Error::from)?,
        (None, Some(url)) => Collateral::fetch(url, &quote)
            .await
            .map_err(|e| Failure::Failed(super::error_chain(&e)))?,
        (None, None) => {
            return Err(Failure::BadInput(anyhow::anyhow!(
                "give --collateral FILE or --pccs URL to check the KMS's attestation"
            )));
        }
    };
    RaTlsVerifier::new(verifier)
        .verify_attestation_with(
            attestation,
            report_data,
            SystemTime::now(),
            Some(collateral),
        )
        .map_err(|e| {
            Failure::Rejected(format!(
                "the attestation over {what} does not verify: {}",
                super::error_chain(&e)
            ))
        })
}

async fn bootstrap(args: BootstrapArgs) -> Result<(), Failure> {
    let client = onboarding_client(&args.url)?;
    let collateral_given = args.evidence.collateral.is_some() || args.evidence.pccs.is_some();
    if !collateral_given && !args.allow_unattested {
        return Err(Failure::BadInput(anyhow::anyhow!(
            "give --collateral FILE or --pccs URL to check the KMS's attestation"
        )));
    }
    let answer = client.bootstrap(&args.domain).await.map_err(failed)?;
    let report_data = bootstrap_report_data(&answer.ca_pubkey, &answer.k256_pubkey);
    let attested = if answer.attestation.is_empty() {
        if !args.allow_unattested {
            return Err(Failure::Rejected(
                "the KMS answered without an attestation (it runs outside a TEE); its keys are stored but unattested: pass --allow-unattested for a development KMS".into(),
            ));
        }
        None
    } else {
        Some(
            verify_kms_attestation(
                &args.evidence,
                &answer.attestation,
                &report_data,
                "the new keys",
            )
            .await?,
        )
    };
    if !args.no_finish {
        client.finish().await.map_err(failed)?;
    }
    let key_provider_id = hex::encode(&answer.ca_pubkey);
    let k256 = hex::encode(&answer.k256_pubkey);
    let mr_aggregated = attested.as_ref().and_then(|peer| {
        let td = peer.quote.quote.td_report()?;
        let key_provider = peer
            .event_log
            .iter()
            .find(|e| e.is_runtime() && e.event == "key-provider")
            .map(|e| e.event_payload.clone())
            .unwrap_or_default();
        Some(hex::encode(
            dstack_attest::Measures::of(td, &key_provider).mr_aggregated,
        ))
    });
    if args.json {
        let out = serde_json::json!({
            "key_provider_id": key_provider_id,
            "k256_pubkey": k256,
            "attested": attested.is_some(),
            "tcb_status": attested.as_ref().map(|p| p.quote.status.as_str()),
            "mr_aggregated": mr_aggregated,
            "finished": !args.no_finish,
        });
        println!("{out:#}");
        return Ok(());
    }
    match &attested {
        Some(peer) => println!(
            "bootstrapped: the keys were generated in a TEE (quote verified, TCB {})",
            peer.quote.status.as_str()
        ),
        None => println!("bootstrapped WITHOUT attestation (development KMS)"),
    }
    println!("key_provider_id (root CA SPKI; apps pin it): {key_provider_id}");
    println!("k256 public key (signs app keys): {k256}");
    if let Some(mr) = mr_aggregated {
        println!("KMS aggregated MR: {mr}");
    }
    if args.no_finish {
        println!("still onboarding: run `dstack kms finish {}`", args.url);
    }
    Ok(())
}

async fn onboard(args: OnboardArgs) -> Result<(), Failure> {
    let client = onboarding_client(&args.url)?;
    KmsClient::new(&args.source).map_err(|e| Failure::BadInput(e.into()))?;
    let answer = client
        .onboard(&args.source, &args.domain)
        .await
        .map_err(|e| match e {
            ClientError::Refused { message, .. } => Failure::Rejected(message),
            other => failed(other),
        })?;
    if !args.no_finish {
        client.finish().await.map_err(failed)?;
    }
    let k256 = hex::encode(&answer.k256_pubkey);
    if args.json {
        println!(
            "{:#}",
            serde_json::json!({ "k256_pubkey": k256, "finished": !args.no_finish })
        );
    } else {
        println!("onboarded from {}: k256 public key {k256}", args.source);
    }
    Ok(())
}

async fn import(args: ImportArgs) -> Result<(), Failure> {
    let client = onboarding_client(&args.url)?;
    let read = |name: &str| {
        let path = args.from.join(name);
        std::fs::read(&path)
            .map_err(|e| Failure::BadInput(anyhow::anyhow!("cannot read {}: {e}", path.display())))
    };
    let text = |name: &str| {
        String::from_utf8(read(name)?)
            .map_err(|_| Failure::BadInput(anyhow::anyhow!("{name} is not PEM text")))
    };
    let parts = dstack_proto::kms::ImportedKeys {
        root_ca_key: text("root-ca.key")?,
        root_k256_key: read("root-k256.key")?,
        temp_ca_key: text("tmp-ca.key")?,
    };
    let offer = client.import_key().await.map_err(failed)?;
    let recipient: [u8; 32] = offer.public_key.as_slice().try_into().map_err(|_| {
        Failure::Rejected(format!(
            "the import key is {} bytes, not 32",
            offer.public_key.len()
        ))
    })?;
    // Nothing leaves this machine before the KMS proved the key is its own.
    verify_kms_attestation(
        &args.evidence,
        &offer.attestation,
        &dstack_kms_client::import_key_report_data(&recipient),
        "the import key",
    )
    .await?;
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(&parts).map_err(|e| Failure::BadInput(e.into()))?,
    );
    let sealed = dstack_keys::sealing::seal(&recipient, &plain)
        .map_err(|e| Failure::Rejected(e.to_string()))?;
    let answer = client.import(sealed).await.map_err(|e| match e {
        ClientError::Refused { message, .. } => Failure::Rejected(message),
        other => failed(other),
    })?;
    if !args.no_finish {
        client.finish().await.map_err(failed)?;
    }
    println!(
        "imported: k256 public key {} (the upstream KMS's; its apps keep their keys)",
        hex::encode(&answer.k256_pubkey)
    );
    Ok(())
}

async fn attestation_info(args: OnboardingArgs) -> Result<(), Failure> {
    let info = onboarding_client(&args.url)?
        .attestation_info()
        .await
        .map_err(failed)?;
    if args.json {
        println!(
            "{:#}",
            serde_json::json!({
                "mr_aggregated": hex::encode(&info.mr_aggregated),
                "device_id": hex::encode(&info.device_id),
                "os_image_hash": hex::encode(&info.os_image_hash),
                "tee_variant": info.tee_variant,
                "site_name": info.site_name,
                "kms_contract_address": info.kms_contract_address,
            })
        );
        return Ok(());
    }
    println!("aggregated MR: {}", hex::encode(&info.mr_aggregated));
    println!("device id:     {}", hex::encode(&info.device_id));
    println!("OS image hash: {}", hex::encode(&info.os_image_hash));
    println!("TEE:           {}", info.tee_variant);
    Ok(())
}

async fn info(args: InfoArgs) -> Result<(), Failure> {
    let pin = match &args.pin {
        Some(hex_pin) => hex::decode(hex_pin.trim_start_matches("0x"))
            .map_err(|e| Failure::BadInput(anyhow::anyhow!("--pin is not hex: {e}")))?,
        None => Vec::new(),
    };
    let client = KmsClient::new(&args.url).map_err(|e| Failure::BadInput(e.into()))?;
    let failed = |e: dstack_kms_client::ClientError| Failure::Failed(super::error_chain(&e));
    // The root is learnt from the KMS itself (trust on first use) unless
    // pinned; every later call trusts only a server that root signed.
    let (_, root) = client.temp_ca().await.map_err(failed)?;
    check_pin(&root, &pin).map_err(|e| Failure::Rejected(e.to_string()))?;
    let meta = client.meta(&root).await.map_err(failed)?;
    let spki = hex::encode(&root.spki);
    let k256 = hex::encode(&meta.k256_pubkey);
    if args.json {
        let out = serde_json::json!({
            "key_provider_id": spki,
            "k256_pubkey": k256,
            "gateway_app_id": meta.gateway_app_id,
            "kms_contract_address": meta.kms_contract_address,
            "chain_id": meta.chain_id,
            "is_dev": meta.is_dev,
        });
        println!("{out:#}");
        return Ok(());
    }
    println!("key_provider_id (root CA SPKI): {spki}");
    println!("k256 public key (signs app keys): {k256}");
    if let Some(gateway) = meta.gateway_app_id.filter(|g| !g.is_empty()) {
        println!("gateway app id: {gateway}");
    }
    if let Some(contract) = meta.kms_contract_address {
        println!(
            "KmsAuth contract: {contract} (chain {})",
            meta.chain_id.unwrap_or_default()
        );
    }
    if pin.is_empty() {
        println!("(not pinned: put key_provider_id into app-compose to accept only this KMS)");
    }
    Ok(())
}
