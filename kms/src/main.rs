//! `dstack-kms`: the KMS daemon and its local key-store verbs. Thin glue
//! over the `dstack_kms` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dstack_attest::{Collateral, QuoteVerifier};
use dstack_kms::Kms;
use dstack_kms::auth::AuthBackend;
use dstack_kms::keystore::{KeyStore, RootKeys};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the KMS API over HTTPS (RA-TLS client certificates).
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
    #[arg(long, env = "DSTACK_KMS_QUOTE_ROOT")]
    quote_root: Option<PathBuf>,
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
    let store = KeyStore::open(&cli.state_dir)?;
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
        Command::Serve(args) => serve(&store, args)?,
    }
    Ok(())
}

fn public_info(keys: &RootKeys) -> serde_json::Value {
    serde_json::json!({
        "k256_pubkey": hex::encode(keys.root.k256_public_key()),
    })
}

fn serve(store: &KeyStore, args: ServeArgs) -> anyhow::Result<()> {
    let keys = store.load()?;
    let auth = AuthBackend::from_spec(&args.auth)?;
    let quotes = match &args.quote_root {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read --quote-root {}", path.display()))?;
            let der = dstack_ra_tls::certificate_der(&bytes)
                .with_context(|| format!("--quote-root {} is not a certificate", path.display()))?;
            QuoteVerifier::new(der)
        }
        None => QuoteVerifier::intel(),
    };
    let mut verifier = RaTlsVerifier::new(quotes);
    if let Some(path) = &args.collateral {
        let collateral = Collateral::load(path)
            .with_context(|| format!("cannot load --collateral {}", path.display()))?;
        verifier = verifier.with_collateral(collateral);
    }
    let mut kms = Kms::new(keys, verifier, auth)?;
    if let Some(url) = &args.pccs {
        kms = kms.with_pccs(dstack_attest::pccs::CollateralCache::new(url.clone())?);
    }
    let tls = Arc::new(kms.rpc_server_config(&args.domain, None)?);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "dstack-kms: serving on https://{} (root CA SPKI sha256 {})",
            args.listen,
            hex::encode(sha2_of(kms.ca_spki()))
        );
        dstack_kms::server::serve(listener, Arc::new(kms), tls).await;
        Ok(())
    })
}

fn sha2_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
