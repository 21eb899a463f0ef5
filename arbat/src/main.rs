//! `arbat`: thin main. Parse, set up tracing, run until a signal, drain, exit.

use std::process::ExitCode;

use arbat::config::{Config, RawSettings};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "arbat",
    version,
    about = "Arbat: real-time Internet & Mobile Banking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    /// Run a node (embedded by default; with --nats and --database-url it joins a cluster).
    Serve {
        /// TOML file with the same settings as the flags (flags and environment win).
        #[arg(long, env = "ARBAT_CONFIG")]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        settings: RawSettings,
    },
    /// Benchmarks against a self-hosted or running node (see `arbat bench live --help`).
    Bench(bench::BenchArgs),
    /// Operation Studio tools: key pairs, signing and checking definition folders.
    Operations {
        #[command(subcommand)]
        command: arbat::operations_cli::OperationsCommand,
    },
    /// The reference ABS's back-office tools.
    Abs {
        #[command(subcommand)]
        command: AbsCommand,
    },
}

#[derive(Subcommand)]
enum AbsCommand {
    /// Post a transaction to an account; the platform receives it as Cache Control changes.
    Post(arbat::abs_cli::PostArgs),
}

/// EX_USAGE: the configuration or the command line is wrong.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARBAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Structured logs for log shippers with ARBAT_LOG_FORMAT=json; readable text otherwise.
    if std::env::var("ARBAT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("arbat: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config, settings } => {
            let config = match Config::load(settings, config.as_deref()) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("arbat: {error}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            runtime.block_on(serve(config))
        }
        Command::Bench(args) => match runtime.block_on(bench::run(args)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("arbat bench: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Operations { command } => match arbat::operations_cli::run(command) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("arbat: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Abs {
            command: AbsCommand::Post(args),
        } => match runtime.block_on(arbat::abs_cli::post(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("arbat: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(config: Config) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("arbat: cannot listen on {}: {error}", config.listen);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });
    match arbat::serve::run(listener, config, stop_rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("arbat: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
