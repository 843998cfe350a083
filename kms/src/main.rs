//! `dstack-kms`: the KMS daemon and its local key-store verbs. Thin glue
//! over the `dstack_kms` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dstack_attest::{Collateral, QuoteVerifier};
use dstack_guest_client::GuestClient;
use dstack_kms::Kms;
use dstack_kms::auth::AuthBackend;
use dstack_kms::evidence::EvidenceChecker;
use dstack_kms::keystore::{KeyStore, RootKeys};
use dstack_kms::onboard::Onboarding;
use dstack_kms::tee::Tee;
use dstack_ra_tls::RaTlsVerifier;

#[derive(Parser)]
#[command(
    name = "dstack-kms",
    version,
    about = "The dstack key management service"
)]
struct Cli {
    /// Where the root keys live (the KMS CVM's sealed disk).
    #[arg(
        long,
        env = "DSTACK_KMS_STATE_DIR",
        default_value = "/var/lib/dstack-kms"
    )]
    state_dir: PathBuf,
    /// Run as a dstack app: seal the root keys with this CVM's key and put
    /// its evidence in the RPC certificate, through the guest API socket
    /// (mount it into the container: `/var/run/dstack.sock`).
    #[arg(long, env = "DSTACK_KMS_GUEST_API")]
    guest_api: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the KMS API over HTTPS (RA-TLS client certificates). A KMS
    /// without root keys first serves onboarding over plain HTTP on the same
    /// address (`Onboard.Bootstrap`, `Onboard.Onboard`,
    /// `Onboard.GetAttestationInfo`, `Onboard.Finish`; `dstack kms
    /// bootstrap|onboard`) until `Finish`.
    Serve(ServeArgs),
    /// Generate the root keys in this KMS's state dir (one time only).
    Bootstrap,
    /// Take an upstream dstack KMS's root keys (root-ca.key, root-k256.key,
    /// tmp-ca.key from its cert dir), so its apps keep their keys.
    Import {
        /// The upstream KMS's cert directory.
        #[arg(long)]
        from: PathBuf,
    },
    /// Print the KMS's public identity (root k256 public key).
    Info,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DSTACK_KMS_LISTEN", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// DNS name of the RPC certificate.
    #[arg(long, env = "DSTACK_KMS_DOMAIN", default_value = "kms.local")]
    domain: String,
    /// Authorisation backend: `policy:/path/policy.json`,
    /// `webhook:http://host:port/path` (upstream's auth API) or
    /// `chain:<rpc-url>#<KmsAuth contract address>`.
    #[arg(long, env = "DSTACK_KMS_AUTH")]
    auth: String,
    /// Trust quotes under this root certificate (PEM or DER) instead of
    /// Intel's: the simulated TEE's root on development hosts.
    #[arg(long, env = "DSTACK_KMS_QUOTE_ROOT", conflicts_with = "quote_root_pem")]
    quote_root: Option<PathBuf>,
    /// The same root given inline as PEM (for a KMS in a CVM, whose compose
    /// file, measured, carries it).
    #[arg(long, env = "DSTACK_KMS_QUOTE_ROOT_PEM")]
    quote_root_pem: Option<String>,
    /// This KMS's site name, reported by `Onboard.GetAttestationInfo`.
    #[arg(long, env = "DSTACK_KMS_SITE_NAME", default_value = "")]
    site_name: String,
    /// Quote collateral (dcap-qvl JSON) for callers' quotes.
    #[arg(long, env = "DSTACK_KMS_COLLATERAL", required_unless_present = "pccs")]
    collateral: Option<PathBuf>,
    /// Fetch callers' collateral from this PCCS (cached until its next
    /// update): Intel's PCS, an operator's PCCS, or on development hosts the
    /// supervisor's sim PCCS.
    #[arg(long, env = "DSTACK_KMS_PCCS", conflicts_with = "collateral")]
    pccs: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tee = match &cli.guest_api {
        Some(socket) => Tee::Guest(GuestClient::new(socket)),
        None => Tee::Host,
    };
    let mut store = KeyStore::open(&cli.state_dir)?;
    if let Some(key) = tee
        .seal_key()
        .await
        .context("cannot get the sealing key from the guest API")?
    {
        store = store.sealed_with(key);
    }
    match cli.command {
        Command::Bootstrap => {
            let keys = RootKeys::generate()?;
            store.store_new(&keys)?;
            println!("{}", public_info(&keys));
        }
        Command::Import { from } => {
            let keys = RootKeys::from_upstream_dir(&from)?;
            store.store_new(&keys)?;
            println!("{}", public_info(&keys));
        }
        Command::Info => println!("{}", public_info(&store.load()?)),
        Command::Serve(args) => serve(store, tee, args).await?,
    }
    Ok(())
}

fn public_info(keys: &RootKeys) -> serde_json::Value {
    serde_json::json!({
        "k256_pubkey": hex::encode(keys.root.k256_public_key()),
    })
}

fn evidence_checker(args: &ServeArgs) -> anyhow::Result<EvidenceChecker> {
    let root =
        match (&args.quote_root, &args.quote_root_pem) {
            (Some(path), _) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read --quote-root {}", path.display()))?;
                Some(dstack_ra_tls::certificate_der(&bytes).with_context(|| {
                    format!("--quote-root {} is not a certificate", path.display())
                })?)
            }
            (None, Some(pem)) => Some(
                dstack_ra_tls::certificate_der(pem.as_bytes())
                    .context("--quote-root-pem is not a PEM certificate")?,
            ),
            (None, None) => None,
        };
    let quotes = match root {
        Some(der) => QuoteVerifier::new(der),
        None => QuoteVerifier::intel(),
    };
    let mut verifier = RaTlsVerifier::new(quotes);
    if let Some(path) = &args.collateral {
        let collateral = Collateral::load(path)
            .with_context(|| format!("cannot load --collateral {}", path.display()))?;
        verifier = verifier.with_collateral(collateral);
    }
    let mut checker = EvidenceChecker::new(verifier);
    if let Some(url) = &args.pccs {
        checker = checker.with_pccs(dstack_attest::pccs::CollateralCache::new(url.clone())?);
    }
    Ok(checker)
}

async fn serve(store: KeyStore, tee: Tee, args: ServeArgs) -> anyhow::Result<()> {
    let mut evidence = evidence_checker(&args)?;
    let mut auth = AuthBackend::from_spec(&args.auth)?;
    let mut listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if !tee.is_tee() {
        eprintln!(
            "dstack-kms: no guest API (--guest-api): root keys are stored unsealed and the RPC certificate carries no attestation; for development only"
        );
    }
    if !store.has_keys() {
        eprintln!(
            "dstack-kms: no root keys yet: onboarding on http://{} (dstack kms bootstrap|onboard, then Finish)",
            args.listen
        );
        let onboarding = Arc::new(Onboarding::new(
            store.clone(),
            tee.clone(),
            evidence,
            auth,
            args.site_name.clone(),
        ));
        listener = dstack_kms::server::serve_onboarding(listener, onboarding.clone()).await;
        let onboarding = Arc::into_inner(onboarding)
            .context("onboarding requests still running after Finish")?;
        (evidence, auth) = onboarding.into_parts();
    }
    let keys = store.load()?;
    let kms = Kms::with_checker(keys, evidence, auth)?.with_bootstrap_info(store.bootstrap_info()?);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot make the RPC key")?;
    let attestation = {
        use rcgen::PublicKeyData;
        let report_data = dstack_ra_tls::report_data_for_spki(&key.subject_public_key_info());
        tee.attest(&report_data)
            .await
            .context("cannot attest the RPC key")?
    };
    let tls = Arc::new(kms.rpc_server_config(&key, &args.domain, attestation)?);
    eprintln!(
        "dstack-kms: serving on https://{} (root CA SPKI sha256 {})",
        args.listen,
        hex::encode(sha2_of(kms.ca_spki()))
    );
    dstack_kms::server::serve(listener, Arc::new(kms), tls).await;
    Ok(())
}

fn sha2_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
