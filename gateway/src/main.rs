//! `dstack-gateway serve --config gateway.toml`: one gateway node.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dstack_gateway::admin::AdminAuth;
use dstack_gateway::config::Config;
use dstack_gateway::node::Node;
use dstack_gateway::proxy::Proxy;
use dstack_gateway::registry::Registrar;
use dstack_gateway::rpc::Rpc;
use dstack_gateway::tee::Tee;
use dstack_guest_client::GuestClient;
use dstack_proto::gateway::InfoResponse;
use dstack_ra_tls::RaTlsVerifier;
use dstack_ra_tls::evidence::EvidenceChecker;

#[derive(Parser)]
#[command(
    name = "dstack-gateway",
    version,
    about = "The dstack gateway: one public entry for every CVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one gateway node.
    Serve {
        /// The configuration file.
        #[arg(
            long,
            env = "DSTACK_GATEWAY_CONFIG",
            default_value = "/etc/dstack-gateway/gateway.toml"
        )]
        config: PathBuf,
        /// The configuration itself, as TOML text (wins over --config): how
        /// a compose file hands it over, measured with the compose.
        #[arg(long, env = "DSTACK_GATEWAY_CONFIG_TOML", hide_env_values = true)]
        config_toml: Option<String>,
    },
    /// Check a configuration file and print what it means.
    Check {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let config = Config::load(&config)?;
            println!(
                "node {} serving {:?} on {:?}; RPC {}; WireGuard {} ({}); etcd {:?}",
                config.node.id,
                config.proxy.base_domains,
                config.proxy.listen,
                config.rpc.listen,
                config.wg.listen,
                config.wg.ip,
                config.etcd.endpoints
            );
            Ok(())
        }
        Command::Serve {
            config,
            config_toml,
        } => {
            let config = Arc::new(match config_toml {
                Some(text) => Config::parse(&text)?,
                None => Config::load(&config)?,
            });
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?
                .block_on(serve(config))
        }
    }
}

fn evidence_checker(config: &Config) -> anyhow::Result<EvidenceChecker> {
    let quotes = match &config.attestation.quote_root_pem {
        Some(pem) => dstack_attest::QuoteVerifier::new(
            dstack_ra_tls::certificate_der(pem.as_bytes())
                .context("[attestation] quote_root_pem is not a PEM certificate")?,
        ),
        None => dstack_attest::QuoteVerifier::intel(),
    };
    let mut checker = EvidenceChecker::new(RaTlsVerifier::new(quotes));
    if let Some(url) = &config.attestation.pccs_url {
        checker = checker.with_pccs(dstack_attest::pccs::CollateralCache::new(url.clone())?);
    }
    Ok(checker)
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    let tee = match &config.tee.insecure_key_file {
        Some(path) => {
            eprintln!(
                "dstack-gateway: keys from {} and no attestation: for development only",
                path.display()
            );
            Tee::Insecure(path.clone())
        }
        None => Tee::Guest(GuestClient::new(&config.tee.guest_api)),
    };
    let admin_auth =
        AdminAuth::from_env(config.admin.insecure_no_auth).map_err(anyhow::Error::msg)?;
    let evidence = evidence_checker(&config)?;
    let node = Node::start(config.clone(), tee.clone())
        .await
        .context("cannot start the gateway node")?;
    let registrar = Arc::new(Registrar::new(
        config.clone(),
        node.kv.clone(),
        node.view.clone(),
        evidence,
        node.metrics.clone(),
        node.tunnel.net.clone(),
    ));
    let proxy = Arc::new(
        Proxy::new(
            config.clone(),
            node.view.clone(),
            node.tunnel.clone(),
            node.certs.clone(),
            node.metrics.clone(),
            node.connections.clone(),
            node.pages.clone(),
        )
        .context("cannot configure TLS")?,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for address in &config.proxy.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (proxy)"))?;
        tasks.spawn(proxy.clone().serve(listener));
    }
    let rpc_names = vec![host_of(&config.node.url)];
    let (cert, key) = tee.rpc_certificate(&rpc_names).await?;
    let rpc_tls = Arc::new(dstack_ra_tls::deferred_client_auth_server_config(
        vec![cert],
        key,
    )?);
    let rpc = Arc::new(Rpc {
        registrar: registrar.clone(),
        info: InfoResponse {
            base_domain: config.proxy.base_domains[0].clone(),
            external_port: u32::from(config.proxy.external_port),
            app_address_ns_prefix: config.proxy.app_address_ns_prefix.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        pages: node.pages.clone(),
    });
    let rpc_listener = tokio::net::TcpListener::bind(config.rpc.listen)
        .await
        .with_context(|| format!("cannot listen on {} (RPC)", config.rpc.listen))?;
    tasks.spawn(rpc.serve(rpc_listener, rpc_tls));
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
    tasks.spawn(dstack_gateway::admin::serve(
        admin_listener,
        node.clone(),
        admin_auth,
    ));
    if let Some(address) = config.debug.insecure_debug_rpc {
        eprintln!(
            "dstack-gateway: Debug RPC (registration without attestation) on {address}: for development only"
        );
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (debug RPC)"))?;
        tasks.spawn(dstack_gateway::rpc::serve_debug(listener, registrar));
    }
    tasks.spawn(node.clone().follow());
    tasks.spawn(node.clone().maintain());
    if config.acme.is_some() {
        tasks.spawn(node.clone().renew_certificates());
    }
    eprintln!(
        "dstack-gateway: node {} up: proxy {:?}, RPC {}, WireGuard {} as {}, admin {}",
        config.node.id,
        config.proxy.listen,
        config.rpc.listen,
        node.tunnel.net.local_udp_addr(),
        config.wg.ip,
        config.admin.listen
    );
    tokio::select! {
        _ = tasks.join_next() => anyhow::bail!("a gateway task ended"),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("dstack-gateway: interrupted, stopping");
            Ok(())
        }
    }
}

/// The host part of a URL (its certificate's name).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned()
}
