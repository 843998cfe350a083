//! `gateway-bench-backend`: what bench/gateway/run needs besides the two
//! proxies, etcd and wrk.
//!
//! - `cert`: the one self-signed wildcard certificate both proxies serve.
//! - `serve`: the backend both proxies forward to. It answers the same tiny
//!   HTTP/1.1 response (keep-alive) on a plain TCP port, which nginx
//!   reaches directly, and inside a userspace WireGuard network as a CVM
//!   registered through the gateway's Debug RPC, which the gateway reaches
//!   as it reaches CVMs in production.
//! - `hold`: opens idle TLS connections to a proxy and keeps them open,
//!   for the memory-per-connection figure.

mod backend;
mod cert;
mod hold;
mod register;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gateway-bench-backend",
    version,
    about = "Backend and helpers of the gateway benchmark (bench/gateway/run)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a self-signed ECDSA P-256 certificate for `*.<domain>` and
    /// `<domain>`; prints the SHA-256 of its DER.
    Cert {
        /// The base domain.
        #[arg(long)]
        domain: String,
        /// Where the certificate (PEM) goes.
        #[arg(long)]
        chain: PathBuf,
        /// Where its private key (PKCS#8 PEM, mode 0600) goes.
        #[arg(long)]
        key: PathBuf,
    },
    /// Serves the response on `--tcp` and, registered as a CVM of
    /// `--app-id`, on `--port` inside the gateway's WireGuard network;
    /// prints `ready <tunnel address>` once both are up, then runs until
    /// killed.
    Serve {
        /// The plain TCP address (nginx's upstream).
        #[arg(long)]
        tcp: SocketAddr,
        /// The gateway's Debug RPC.
        #[arg(long)]
        debug_rpc: SocketAddr,
        /// The app id to register as (40 hex digits).
        #[arg(long)]
        app_id: String,
        /// The port served inside the tunnel (the gateway's default is 80).
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
    /// Opens `--count` TLS connections to `--connect` with SNI
    /// `--server-name`, checked against `--ca`; prints `held <count>
    /// <SHA-256 of the served certificate>` once all are open, then holds
    /// them, idle, until killed.
    Hold {
        /// The proxy's address.
        #[arg(long)]
        connect: SocketAddr,
        /// The SNI (and the name checked in the certificate).
        #[arg(long)]
        server_name: String,
        /// How many connections.
        #[arg(long)]
        count: usize,
        /// The certificate the proxy must serve (PEM).
        #[arg(long)]
        ca: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    match cli.command {
        Command::Cert { domain, chain, key } => {
            let fingerprint = cert::write_self_signed(&domain, &chain, &key)?;
            println!("{fingerprint}");
            Ok(())
        }
        Command::Serve {
            tcp,
            debug_rpc,
            app_id,
            port,
        } => runtime.block_on(async {
            let plain = tokio::net::TcpListener::bind(tcp)
                .await
                .with_context(|| format!("cannot listen on {tcp}"))?;
            let net = register::join_as_cvm(debug_rpc, &app_id)
                .await
                .context("cannot join the gateway's network as a CVM")?;
            let tunnel = net
                .listen(port)
                .await
                .with_context(|| format!("cannot listen on tunnel port {port}"))?;
            println!("ready {}", net.address());
            tokio::select! {
                () = backend::serve_tcp(plain) => {}
                () = backend::serve_tunnel(tunnel) => {}
            }
            anyhow::bail!("a listener stopped accepting")
        }),
        Command::Hold {
            connect,
            server_name,
            count,
            ca,
        } => runtime.block_on(hold::hold(connect, &server_name, count, &ca)),
    }
}
