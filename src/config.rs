//! Command line and environment. Every setting has an embedded default, so `anchor-pdp serve`
//! runs with no arguments and no config file; a flag beats its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "anchor-pdp",
    version,
    about = "Policy decision point for virtual-anchor livestreams"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (PolicyDecisionPoint, PolicyAdmin, health, reflection).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "ANCHOR_PDP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the sled store (created if missing).
    #[arg(long, env = "ANCHOR_PDP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory of the Cedar schema and policies.
    #[arg(long, env = "ANCHOR_PDP_POLICIES", default_value = "./policies")]
    pub policies: PathBuf,

    /// Seconds a gateway should wait before re-checking a live session.
    #[arg(long, env = "ANCHOR_PDP_RECHECK_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub recheck_secs: u64,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "ANCHOR_PDP_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_message_bytes: u64,
}
