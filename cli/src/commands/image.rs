//! `dstack image ...`: list the supervisor's OS images, build new ones.

use clap::{Args, Subcommand};
use dstack_proto::supervisor::ImageInfo;
use hyper::Method;

use super::Failure;
use crate::client::Client;

/// Image commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// List the OS images the supervisor can boot.
    Ls(LsArgs),
}

/// `--json` only.
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: ImageCommand, client: Client) -> Result<(), Failure> {
    match cmd {
        ImageCommand::Ls(args) => {
            let images: Vec<ImageInfo> =
                client.call(Method::GET, "/v1/images", None::<&()>).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                );
                return Ok(());
            }
            println!("{:<32} {:<10} {:<5} DIGEST", "NAME", "VERSION", "DEV");
            for i in &images {
                println!(
                    "{:<32} {:<10} {:<5} {}",
                    i.name,
                    i.version,
                    if i.is_dev { "yes" } else { "no" },
                    i.digest
                );
            }
            Ok(())
        }
    }
}
