//! The `glia` command line: `serve` runs the platform; the other commands are
//! clients of a running server's HTTP API.

mod admin;
mod client;
mod logs;
mod new;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::server::Platform;

/// Default server URL for client commands.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// glia: a serverless platform for WebAssembly model functions.
#[derive(Debug, Parser)]
#[command(name = "glia", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: the API and the functions it serves.
    Serve(ServeArgs),
    /// Upload a component as a new version of a function.
    Deploy(client::DeployArgs),
    /// List deployed functions.
    #[command(alias = "ls")]
    List(client::ListArgs),
    /// Call a function and print its response body.
    Invoke(client::InvokeArgs),
    /// Delete a function and all its versions.
    #[command(alias = "rm")]
    Delete(client::DeleteArgs),
    /// Show usage and cost totals from the ledger.
    Usage(client::UsageArgs),
    /// Show what a function's invocations wrote to stdout and stderr.
    Logs(logs::LogsArgs),
    /// Create a function crate from a template.
    New(new::NewArgs),
    /// Manage tenants (admin key of the default tenant).
    Tenants(admin::TenantsArgs),
    /// Manage a tenant's API keys.
    Keys(admin::KeysArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, env = "GLIA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory (overrides `server.data_dir`).
    #[arg(long, env = "GLIA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML, see platform.toml); built-in defaults when
    /// absent.
    #[arg(long, env = "GLIA_CONFIG")]
    config: Option<PathBuf>,
    /// Single-user development mode: no API keys, every request acts as the
    /// admin (`auth.enabled = false`). Only on a machine you alone use.
    #[arg(long)]
    dev: bool,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Deploy(args) => client::deploy(args).await,
        Command::List(args) => client::list(args).await,
        Command::Invoke(args) => client::invoke(args).await,
        Command::New(args) => new::new(args),
        Command::Delete(args) => client::delete(args).await,
        Command::Usage(args) => client::usage(args).await,
        Command::Tenants(args) => admin::tenants(args).await,
        Command::Keys(args) => admin::keys(args).await,
        Command::Logs(args) => logs::logs(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    if args.dev {
        config.auth.enabled = false;
    }
    if let Ok(key) = std::env::var("GLIA_ADMIN_KEY")
        && !key.is_empty()
    {
        config.auth.admin_key = Some(key);
    }
    config.validate()?;
    let telemetry = crate::telemetry::init(&config.telemetry)?;
    let listen = config.server.listen;
    eprintln!("{}", config.summary());
    let platform = Platform::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
    let local = listener.local_addr()?;
    let functions = platform
        .state()
        .registry
        .list(crate::registry::DEFAULT_TENANT);
    eprintln!(
        "ready on http://{local} with {} function(s){}",
        functions.len(),
        if functions.iter().any(|f| &*f.name == "hello") {
            format!(" — try: curl http://{local}/fn/hello/")
        } else {
            String::new()
        }
    );
    tracing::info!(%local, "ready");
    platform.serve(listener, shutdown_signal()).await?;
    // The last spans reach the collector (the export thread blocks).
    tokio::task::spawn_blocking(move || drop(telemetry)).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
