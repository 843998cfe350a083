//! `dstack chain ...`: govern which CVMs a KMS gives keys to, through its
//! KmsAuth contract and the apps' AppAuth contracts, on any Ethereum JSON-RPC
//! endpoint. Thin over `dstack_contracts::admin::Admin`; `info` only reads.
//!
//! The signing key comes from a file or the environment, never from the
//! command line (where `ps` and shell history would show it), and is never
//! printed. RPC URLs often carry an API key, so messages name only their
//! scheme and host.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use dstack_contracts::admin::{Admin, NewApp};
use dstack_contracts::alloy::primitives::Address;
use dstack_contracts::alloy::rpc::types::TransactionReceipt;
use dstack_contracts::inspect::{AppState, Inspector, KmsState};
use dstack_contracts::{ChainError, fixed, parse_address, public_endpoint};
use serde_json::json;
use zeroize::Zeroizing;

use super::Failure;

/// Where the signing key comes from when `--private-key-file` is not given.
const KEY_ENV: &str = "DSTACK_ETH_PRIVATE_KEY";

/// `dstack chain`: options shared by every subcommand.
#[derive(Debug, Args)]
pub(crate) struct ChainArgs {
    /// Ethereum JSON-RPC endpoint (http:// or https://).
    #[arg(
        long,
        global = true,
        env = "DSTACK_ETH_RPC_URL",
        hide_env_values = true
    )]
    rpc_url: Option<String>,
    /// File holding the signer's secp256k1 private key, hex [default: the
    /// DSTACK_ETH_PRIVATE_KEY environment variable].
    #[arg(long, global = true)]
    private_key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ChainCommand,
}

/// Chain commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ChainCommand {
    /// Deploy the KMS contracts, owned by the signer: the DstackApp and
    /// DstackKms implementations and the KmsAuth proxy the KMS is
    /// configured with (`dstack-kms serve --auth chain:<rpc-url>#<kms>`).
    DeployKms,
    /// Deploy an app's AppAuth contract through the KMS's factory and
    /// register it; the contract's address is the app id
    /// (`dstack vm deploy --app-id`).
    DeployApp(DeployAppArgs),
    /// Allow a compose hash (an app version) to boot the app.
    AddComposeHash(ComposeHashArgs),
    /// Stop allowing a compose hash: its next boots get no keys.
    RemoveComposeHash(ComposeHashArgs),
    /// Allow a device to boot the app.
    AddDevice(AppDeviceArgs),
    /// Stop allowing a device to boot the app.
    RemoveDevice(AppDeviceArgs),
    /// Let any device boot the app (`true`), or only its listed ones (`false`).
    SetAllowAnyDevice(AllowAnyDeviceArgs),
    /// Allow an OS image (for every app of the KMS, and for KMS replicas).
    AddOsImageHash(OsImageArgs),
    /// Stop allowing an OS image.
    RemoveOsImageHash(OsImageArgs),
    /// Allow a KMS replica's aggregated measurement.
    AddKmsAggregatedMr(KmsMrArgs),
    /// Stop allowing a KMS replica's aggregated measurement.
    RemoveKmsAggregatedMr(KmsMrArgs),
    /// Allow a device to run a KMS replica.
    AddKmsDevice(KmsDeviceArgs),
    /// Stop allowing a device to run a KMS replica.
    RemoveKmsDevice(KmsDeviceArgs),
    /// Set the app id of the gateway the KMS's apps trust.
    SetGatewayAppId(GatewayArgs),
    /// Show what a KmsAuth and/or AppAuth contract allows now.
    Info(InfoArgs),
}

/// A KmsAuth contract.
#[derive(Debug, Args)]
pub(crate) struct KmsArg {
    /// The KmsAuth contract (0x and 40 hex digits).
    #[arg(long)]
    kms: String,
}

/// An AppAuth contract.
#[derive(Debug, Args)]
pub(crate) struct AppArg {
    /// The app's AppAuth contract, i.e. its app id (0x and 40 hex digits).
    #[arg(long)]
    app: String,
}

/// Arguments of `dstack chain deploy-app`.
#[derive(Debug, Args)]
pub(crate) struct DeployAppArgs {
    #[command(flatten)]
    kms: KmsArg,
    /// A first allowed compose hash (32 bytes of hex).
    #[arg(long, conflicts_with = "compose")]
    compose_hash: Option<String>,
    /// Allow the compose hash of this file, as `dstack vm deploy FILE` would
    /// deploy it (app-compose.json as-is, or a compose YAML wrapped).
    #[arg(long)]
    compose: Option<PathBuf>,
    /// With a compose YAML: the app name it is wrapped with (as `dstack vm
    /// deploy --name`; default: the file's directory name).
    #[arg(long, requires = "compose")]
    name: Option<String>,
    /// Who may change the app's policy [default: the signer].
    #[arg(long)]
    owner: Option<String>,
    /// A first allowed device (32 bytes of hex).
    #[arg(long)]
    device_id: Option<String>,
    /// Let any device boot the app.
    #[arg(long)]
    allow_any_device: bool,
    /// Refuse platforms whose TCB status is not UpToDate.
    #[arg(long)]
    require_tcb_up_to_date: bool,
    /// Make the app's contract immutable from the start (cannot be undone).
    #[arg(long)]
    disable_upgrades: bool,
}

/// Arguments of `dstack chain add-compose-hash` / `remove-compose-hash`.
#[derive(Debug, Args)]
pub(crate) struct ComposeHashArgs {
    #[command(flatten)]
    app: AppArg,
    /// The compose hash (32 bytes of hex).
    #[arg(required_unless_present = "compose", conflicts_with = "compose")]
    hash: Option<String>,
    /// Use the compose hash of this file, as `dstack vm deploy FILE` would
    /// deploy it (app-compose.json as-is, or a compose YAML wrapped).
    #[arg(long)]
    compose: Option<PathBuf>,
    /// With a compose YAML: the app name it is wrapped with (as `dstack vm
    /// deploy --name`; default: the file's directory name).
    #[arg(long, requires = "compose")]
    name: Option<String>,
}

/// Arguments of `dstack chain add-device` / `remove-device`.
#[derive(Debug, Args)]
pub(crate) struct AppDeviceArgs {
    #[command(flatten)]
    app: AppArg,
    /// The device id (32 bytes of hex).
    device_id: String,
}

/// Arguments of `dstack chain set-allow-any-device`.
#[derive(Debug, Args)]
pub(crate) struct AllowAnyDeviceArgs {
    #[command(flatten)]
    app: AppArg,
    /// `true` or `false`.
    #[arg(action = clap::ArgAction::Set)]
    allow: bool,
}

/// Arguments of `dstack chain add-os-image-hash` / `remove-os-image-hash`.
#[derive(Debug, Args)]
pub(crate) struct OsImageArgs {
    #[command(flatten)]
    kms: KmsArg,
    /// The OS image hash (32 bytes of hex; `dstack image ls` shows it as DIGEST).
    #[arg(required_unless_present = "image_dir", conflicts_with = "image_dir")]
    hash: Option<String>,
    /// Use the os_image_hash of this built image directory (its digest.txt).
    #[arg(long)]
    image_dir: Option<PathBuf>,
}

/// Arguments of `dstack chain add-kms-aggregated-mr` / `remove-kms-aggregated-mr`.
#[derive(Debug, Args)]
pub(crate) struct KmsMrArgs {
    #[command(flatten)]
    kms: KmsArg,
    /// The aggregated measurement (32 bytes of hex).
    mr_aggregated: String,
}

/// Arguments of `dstack chain add-kms-device` / `remove-kms-device`.
#[derive(Debug, Args)]
pub(crate) struct KmsDeviceArgs {
    #[command(flatten)]
    kms: KmsArg,
    /// The device id (32 bytes of hex).
    device_id: String,
}

/// Arguments of `dstack chain set-gateway-app-id`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    kms: KmsArg,
    /// The gateway's app id (20 bytes of hex, 0x optional); stored as dstack
    /// writes app ids: lowercase hex without 0x.
    app_id: String,
}

/// Arguments of `dstack chain info`.
#[derive(Debug, Args)]
#[group(id = "contract", required = true, multiple = true, args = ["kms", "app"])]
pub(crate) struct InfoArgs {
    /// A KmsAuth contract: its owner, gateway, allowed OS images, KMS
    /// measurements and devices, and registered apps.
    #[arg(long)]
    kms: Option<String>,
    /// An AppAuth contract (app id): its owner, flags, allowed compose
    /// hashes and devices.
    #[arg(long)]
    app: Option<String>,
    /// Read events from this block on (the lists come from the contracts'
    /// events; endpoints that limit log ranges need the deployment's block).
    #[arg(long, default_value_t = 0)]
    from_block: u64,
}

pub(crate) async fn run(args: ChainArgs) -> Result<(), Failure> {
    let url = args
        .rpc_url
        .clone()
        .context("no RPC endpoint: pass --rpc-url or set DSTACK_ETH_RPC_URL")?;
    let out = Output {
        json: args.json,
        url,
        key_file: args.private_key_file,
    };
    let failed = |e: ChainError| out.failed(&e);
    match args.command {
        ChainCommand::Info(a) => return info(&out, a).await,
        ChainCommand::DeployKms => {
            let admin = out.admin()?;
            let d = admin.deploy_kms().await.map_err(failed)?;
            out.print(
                json!({
                    "kms": addr(d.kms),
                    "kms_implementation": addr(d.kms_implementation),
                    "app_implementation": addr(d.app_implementation),
                    "owner": addr(admin.address()),
                }),
                &[
                    ("KmsAuth (the KMS's contract)", addr(d.kms)),
                    ("DstackKms implementation", addr(d.kms_implementation)),
                    ("DstackApp implementation", addr(d.app_implementation)),
                    ("owner", addr(admin.address())),
                ],
            );
        }
        ChainCommand::DeployApp(a) => {
            let kms = address("--kms", &a.kms.kms)?;
            let compose_hash = match (&a.compose_hash, &a.compose) {
                (Some(hash), _) => hash32("--compose-hash", hash)?,
                (None, Some(file)) => compose_file_hash(file, a.name.as_deref())?,
                (None, None) => [0; 32],
            };
            let owner = a
                .owner
                .as_deref()
                .map(|o| address("--owner", o))
                .transpose()?;
            let device_id = match &a.device_id {
                Some(d) => hash32("--device-id", d)?,
                None => [0; 32],
            };
            let admin = out.admin()?;
            let owner = owner.unwrap_or_else(|| admin.address());
            let app = NewApp {
                owner,
                disable_upgrades: a.disable_upgrades,
                require_tcb_up_to_date: a.require_tcb_up_to_date,
                allow_any_device: a.allow_any_device,
                device_id,
                compose_hash,
            };
            let app_id = admin
                .deploy_and_register_app(kms, &app)
                .await
                .map_err(failed)?;
            let hash_text = (compose_hash != [0; 32]).then(|| hex::encode(compose_hash));
            out.print(
                json!({
                    "app_id": addr(app_id),
                    "kms": addr(kms),
                    "owner": addr(owner),
                    "compose_hash": hash_text,
                }),
                &[
                    ("app id (AppAuth contract)", addr(app_id)),
                    ("owner", addr(owner)),
                    (
                        "compose hash",
                        hash_text.unwrap_or_else(|| "(none yet)".into()),
                    ),
                ],
            );
        }
        ChainCommand::AddComposeHash(a) => {
            let (app, hash) = compose_target(&a)?;
            let admin = out.admin()?;
            let r = admin.add_compose_hash(app, hash).await.map_err(failed)?;
            out.tx("addComposeHash", app, &hex::encode(hash), &r);
        }
        ChainCommand::RemoveComposeHash(a) => {
            let (app, hash) = compose_target(&a)?;
            let admin = out.admin()?;
            let r = admin.remove_compose_hash(app, hash).await.map_err(failed)?;
            out.tx("removeComposeHash", app, &hex::encode(hash), &r);
        }
        ChainCommand::AddDevice(a) => {
            let (app, device) = (
                address("--app", &a.app.app)?,
                hash32("device id", &a.device_id)?,
            );
            let admin = out.admin()?;
            let r = admin.add_device(app, device).await.map_err(failed)?;
            out.tx("addDevice", app, &hex::encode(device), &r);
        }
        ChainCommand::RemoveDevice(a) => {
            let (app, device) = (
                address("--app", &a.app.app)?,
                hash32("device id", &a.device_id)?,
            );
            let admin = out.admin()?;
            let r = admin.remove_device(app, device).await.map_err(failed)?;
            out.tx("removeDevice", app, &hex::encode(device), &r);
        }
        ChainCommand::SetAllowAnyDevice(a) => {
            let app = address("--app", &a.app.app)?;
            let admin = out.admin()?;
            let r = admin
                .set_allow_any_device(app, a.allow)
                .await
                .map_err(failed)?;
            out.tx("setAllowAnyDevice", app, &a.allow.to_string(), &r);
        }
        ChainCommand::AddOsImageHash(a) => {
            let (kms, hash) = os_image_target(&a)?;
            let admin = out.admin()?;
            let r = admin.add_os_image_hash(kms, hash).await.map_err(failed)?;
            out.tx("addOsImageHash", kms, &hex::encode(hash), &r);
        }
        ChainCommand::RemoveOsImageHash(a) => {
            let (kms, hash) = os_image_target(&a)?;
            let admin = out.admin()?;
            let r = admin
                .remove_os_image_hash(kms, hash)
                .await
                .map_err(failed)?;
            out.tx("removeOsImageHash", kms, &hex::encode(hash), &r);
        }
        ChainCommand::AddKmsAggregatedMr(a) => {
            let (kms, mr) = (
                address("--kms", &a.kms.kms)?,
                hash32("mr_aggregated", &a.mr_aggregated)?,
            );
            let admin = out.admin()?;
            let r = admin.add_kms_aggregated_mr(kms, mr).await.map_err(failed)?;
            out.tx("addKmsAggregatedMr", kms, &hex::encode(mr), &r);
        }
        ChainCommand::RemoveKmsAggregatedMr(a) => {
            let (kms, mr) = (
                address("--kms", &a.kms.kms)?,
                hash32("mr_aggregated", &a.mr_aggregated)?,
            );
            let admin = out.admin()?;
            let r = admin
                .remove_kms_aggregated_mr(kms, mr)
                .await
                .map_err(failed)?;
            out.tx("removeKmsAggregatedMr", kms, &hex::encode(mr), &r);
        }
        ChainCommand::AddKmsDevice(a) => {
            let (kms, device) = (
                address("--kms", &a.kms.kms)?,
                hash32("device id", &a.device_id)?,
            );
            let admin = out.admin()?;
            let r = admin.add_kms_device(kms, device).await.map_err(failed)?;
            out.tx("addKmsDevice", kms, &hex::encode(device), &r);
        }
        ChainCommand::RemoveKmsDevice(a) => {
            let (kms, device) = (
                address("--kms", &a.kms.kms)?,
                hash32("device id", &a.device_id)?,
            );
            let admin = out.admin()?;
            let r = admin.remove_kms_device(kms, device).await.map_err(failed)?;
            out.tx("removeKmsDevice", kms, &hex::encode(device), &r);
        }
        ChainCommand::SetGatewayAppId(a) => {
            let kms = address("--kms", &a.kms.kms)?;
            let id = hex::encode(address("gateway app id", &a.app_id)?);
            let admin = out.admin()?;
            let r = admin.set_gateway_app_id(kms, &id).await.map_err(failed)?;
            out.tx("setGatewayAppId", kms, &id, &r);
        }
    }
    Ok(())
}

async fn info(out: &Output, args: InfoArgs) -> Result<(), Failure> {
    let kms = args
        .kms
        .as_deref()
        .map(|k| address("--kms", k))
        .transpose()?;
    let app = args
        .app
        .as_deref()
        .map(|a| address("--app", a))
        .transpose()?;
    let inspect = Inspector::new(&out.url).map_err(|e| out.bad_input(&e))?;
    let failed = |e: ChainError| out.failed(&e);
    let chain_id = inspect.chain_id().await.map_err(failed)?;
    let kms_state = match kms {
        Some(k) => Some((k, inspect.kms(k, args.from_block).await.map_err(failed)?)),
        None => None,
    };
    let app_state = match app {
        Some(a) => Some((a, inspect.app(a, args.from_block).await.map_err(failed)?)),
        None => None,
    };
    if out.json {
        let mut value = json!({ "chain_id": chain_id });
        if let Some((k, s)) = &kms_state {
            value["kms"] = kms_json(*k, s);
        }
        if let Some((a, s)) = &app_state {
            value["app"] = app_json(*a, s);
        }
        println!("{value:#}");
        return Ok(());
    }
    println!("chain id: {chain_id}");
    if let Some((k, s)) = &kms_state {
        print_kms(*k, s);
    }
    if let Some((a, s)) = &app_state {
        print_app(*a, s);
    }
    Ok(())
}

fn kms_json(kms: [u8; 20], s: &KmsState) -> serde_json::Value {
    json!({
        "address": addr(kms),
        "owner": addr(s.owner),
        "gateway_app_id": s.gateway_app_id,
        "app_implementation": addr(s.app_implementation),
        "os_image_hashes": hexes(&s.os_image_hashes),
        "kms_aggregated_mrs": hexes(&s.kms_aggregated_mrs),
        "kms_devices": hexes(&s.kms_devices),
        "apps": s.apps.iter().map(|a| addr(*a)).collect::<Vec<_>>(),
    })
}

fn app_json(app: [u8; 20], s: &AppState) -> serde_json::Value {
    json!({
        "address": addr(app),
        "owner": addr(s.owner),
        "allow_any_device": s.allow_any_device,
        "require_tcb_up_to_date": s.require_tcb_up_to_date,
        "compose_hashes": hexes(&s.compose_hashes),
        "devices": hexes(&s.devices),
    })
}

fn print_kms(kms: [u8; 20], s: &KmsState) {
    println!("KmsAuth {}", addr(kms));
    println!("  owner:              {}", addr(s.owner));
    let gateway = if s.gateway_app_id.is_empty() {
        "(unset)"
    } else {
        &s.gateway_app_id
    };
    println!("  gateway app id:     {gateway}");
    println!("  app implementation: {}", addr(s.app_implementation));
    print_list("OS images", &hexes(&s.os_image_hashes));
    print_list("KMS aggregated MRs", &hexes(&s.kms_aggregated_mrs));
    print_list("KMS devices", &hexes(&s.kms_devices));
    let apps: Vec<String> = s.apps.iter().map(|a| addr(*a)).collect();
    print_list("registered apps", &apps);
}

fn print_app(app: [u8; 20], s: &AppState) {
    println!("AppAuth {} (app id)", addr(app));
    println!("  owner:                   {}", addr(s.owner));
    println!("  any device:              {}", yes_no(s.allow_any_device));
    println!(
        "  requires UpToDate TCB:   {}",
        yes_no(s.require_tcb_up_to_date)
    );
    print_list("compose hashes", &hexes(&s.compose_hashes));
    print_list("devices", &hexes(&s.devices));
}

fn print_list(title: &str, items: &[String]) {
    if items.is_empty() {
        println!("  {title}: (none)");
        return;
    }
    println!("  {title}:");
    for item in items {
        println!("    {item}");
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The endpoint, the signer's key file, and how to print: what every
/// subcommand needs.
struct Output {
    json: bool,
    /// Kept out of messages but for its scheme and host.
    url: String,
    key_file: Option<PathBuf>,
}

impl Output {
    /// A signer on the endpoint; its key is dropped (and zeroed) once parsed.
    fn admin(&self) -> Result<Admin, Failure> {
        let key = signing_key(self.key_file.as_deref())?;
        Admin::connect(&self.url, &key).map_err(|e| self.bad_input(&e))
    }

    /// Prints `value` as JSON, or the labelled lines.
    fn print(&self, value: serde_json::Value, lines: &[(&str, String)]) {
        if self.json {
            println!("{value:#}");
            return;
        }
        let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, text) in lines {
            println!("{label:<width$}  {text}");
        }
    }

    /// Reports a mined transaction.
    fn tx(&self, call: &str, contract: [u8; 20], value: &str, r: &TransactionReceipt) {
        let tx_hash = r.transaction_hash.to_string();
        let block = r.block_number;
        if self.json {
            let out = json!({
                "call": call,
                "contract": addr(contract),
                "value": value,
                "tx_hash": tx_hash,
                "block": block,
            });
            println!("{out:#}");
            return;
        }
        let block = block.map(|b| format!(" in block {b}")).unwrap_or_default();
        println!("{call}({value}) on {}: tx {tx_hash}{block}", addr(contract));
    }

    /// The error's text with the RPC URL cut to its scheme and host.
    fn redact(&self, e: &dyn std::error::Error) -> String {
        super::error_chain(e).replace(&self.url, &public_endpoint(&self.url))
    }

    fn failed(&self, e: &ChainError) -> Failure {
        Failure::Failed(self.redact(e))
    }

    fn bad_input(&self, e: &ChainError) -> Failure {
        Failure::BadInput(anyhow!(self.redact(e)))
    }
}

/// The signer's key: `--private-key-file`, else `$DSTACK_ETH_PRIVATE_KEY`.
fn signing_key(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = file {
        // No file content in any message: it is a private key.
        let text = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .with_context(|| format!("cannot read --private-key-file {}", path.display()))?;
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    match std::env::var(KEY_ENV) {
        Ok(key) => Ok(Zeroizing::new(key)),
        Err(_) => Err(anyhow!(
            "no signing key: pass --private-key-file FILE or set {KEY_ENV}"
        )),
    }
}

/// A contract address given as `what`.
fn address(what: &str, value: &str) -> anyhow::Result<[u8; 20]> {
    parse_address(value).with_context(|| what.to_owned())
}

/// Exactly 32 bytes of hex (0x optional): never padded or truncated, since
/// the contracts compare them bit for bit.
fn hash32(what: &'static str, value: &str) -> anyhow::Result<[u8; 32]> {
    let digits = value.strip_prefix("0x").unwrap_or(value);
    let bytes = hex::decode(digits).with_context(|| format!("{what} {value:?} is not hex"))?;
    Ok(fixed::<32>(what, &bytes)?)
}

fn compose_file_hash(file: &Path, name: Option<&str>) -> anyhow::Result<[u8; 32]> {
    super::vm::compose_hash_of(file, name)
        .with_context(|| format!("cannot compute the compose hash of {}", file.display()))
}

fn compose_target(a: &ComposeHashArgs) -> anyhow::Result<([u8; 20], [u8; 32])> {
    let app = address("--app", &a.app.app)?;
    let hash = match (&a.hash, &a.compose) {
        (Some(hash), _) => hash32("compose hash", hash)?,
        (None, Some(file)) => compose_file_hash(file, a.name.as_deref())?,
        // clap requires one of them.
        (None, None) => return Err(anyhow!("give a compose hash or --compose FILE")),
    };
    Ok((app, hash))
}

fn os_image_target(a: &OsImageArgs) -> anyhow::Result<([u8; 20], [u8; 32])> {
    let kms = address("--kms", &a.kms.kms)?;
    let hash = match (&a.hash, &a.image_dir) {
        (Some(hash), _) => hash32("OS image hash", hash)?,
        (None, Some(dir)) => {
            let digest = dstack_reproducible::image_digest(dir)
                .with_context(|| format!("{} is not a built image", dir.display()))?;
            hash32("OS image hash (digest.txt)", &digest)?
        }
        (None, None) => return Err(anyhow!("give an OS image hash or --image-dir DIR")),
    };
    Ok((kms, hash))
}

fn addr(a: [u8; 20]) -> String {
    Address::from(a).to_checksum(None)
}

fn hexes(list: &[[u8; 32]]) -> Vec<String> {
    list.iter().map(hex::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_exactly_32_bytes() {
        let h = "ab".repeat(32);
        assert_eq!(hash32("compose hash", &h).unwrap(), [0xab; 32]);
        assert_eq!(
            hash32("compose hash", &format!("0x{h}")).unwrap(),
            [0xab; 32]
        );
        let short = hash32("compose hash", &"ab".repeat(31)).unwrap_err();
        assert_eq!(
            format!("{short:#}"),
            "compose hash must be 32 bytes, got 31"
        );
        let long = hash32("compose hash", &"ab".repeat(33)).unwrap_err();
        assert_eq!(format!("{long:#}"), "compose hash must be 32 bytes, got 33");
        let odd = hash32("compose hash", "abc").unwrap_err();
        assert!(format!("{odd:#}").starts_with("compose hash \"abc\" is not hex"));
    }

    #[test]
    fn addresses_name_the_flag() {
        let e = address("--app", "0x1234").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "--app: bad address \"0x1234\": expected 0x and 40 hex digits"
        );
        assert_eq!(
            address("--kms", &format!("0x{}", "aB".repeat(20))).unwrap(),
            [0xab; 20]
        );
    }

    #[test]
    fn messages_keep_rpc_secrets_out() {
        let out = Output {
            json: false,
            url: "https://eth.example/v3/SECRETKEY".into(),
            key_file: None,
        };
        let e = ChainError::Unreachable {
            call: "owner",
            url: out.url.clone(),
            source: dstack_contracts::alloy::transports::TransportErrorKind::custom_str(
                "error sending request for url (https://eth.example/v3/SECRETKEY)",
            ),
        };
        let text = out.redact(&e);
        assert!(!text.contains("SECRETKEY"), "{text}");
        assert!(text.contains("https://eth.example"), "{text}");
    }
}
