//! The daemon. Parses arguments and calls `auditd::run`; nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// mimalloc rather than the system allocator: the write path allocates
/// per field of every event (protobuf strings, Tantivy documents) on many
/// threads, where glibc's per-thread arenas cost time and keep freed
/// memory. See docs/benchmarks-history.md for what it changed. Without
/// transparent huge pages (`main`, `auditd::allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// auditd: takes audit events over gRPC, keeps every acknowledged event
/// safe on disk, indexes them, and answers searches.
///
/// Every setting has a default; a TOML file (--config) and AUDITD_*
/// environment variables override them (nested with __, e.g.
/// AUDITD_WAL__SYNC=never), and these flags override both.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (/metrics, /healthz) [default: 127.0.0.1:8080].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// A cluster node's role: all | ingest | index | query [default: all;
    /// `[cluster] role`].
    #[arg(long)]
    role: Option<auditd::config::Role>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// With the daemon stopped: move damaged index partitions aside, so the
    /// next start re-indexes what the write-ahead log holds, and report
    /// exactly how many events could not be recovered. Changes nothing
    /// when no partition is damaged.
    Recover,
    /// With the daemon stopped: rewrite a data directory written by an
    /// older auditd (data format 1) into this one's format, losing
    /// nothing. The next start re-indexes every event.
    Migrate {
        /// Keep the old index and log in <data_dir>/format-1/ (deleted
        /// otherwise, once the new directory is complete).
        #[arg(long)]
        keep_old: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    auditd::allocator::keep_huge_pages_off();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("auditd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = auditd::Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = args.grpc_addr {
        config.grpc_addr = addr;
    }
    if let Some(addr) = args.http_addr {
        config.http_addr = addr;
    }
    if let Some(role) = args.role {
        config.cluster.role = role;
        config.check()?;
    }
    if args.print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    if let Some(command) = &args.command {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .init();
        match command {
            Command::Recover => print!("{}", auditd::recover::recover(&config)?),
            Command::Migrate { keep_old } => {
                print!("{}", auditd::migrate::migrate(&config, *keep_old)?)
            }
        }
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter).with_context(|| {
        format!(
            "log.filter = {:?} is not a tracing filter",
            config.log.filter
        )
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    for (old, new) in config.deprecated() {
        tracing::warn!(
            old,
            new,
            "the setting {old} is deprecated; it is read as {new}"
        );
    }
    auditd::failpoint::setup_from_env();
    let listeners = auditd::Listeners::bind(&config)
        .await
        .with_context(|| format!("binding {} and {}", config.grpc_addr, config.http_addr))?;
    auditd::run(config, listeners, auditd::server::shutdown_signal()).await?;
    Ok(())
}
