//! `dstack kms`: a KMS as its users see it.

use clap::Subcommand;
use dstack_kms_client::{KmsClient, check_pin};

use super::Failure;

/// KMS commands.
#[derive(Debug, Subcommand)]
pub(crate) enum KmsCommand {
    /// Show a KMS's identity: the root key apps pin as `key_provider_id`,
    /// its k256 public key (which signs app keys) and its metadata.
    Info(InfoArgs),
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
    }
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
