//! `magnetar`: the one binary of Magnetar, a Pulsar-compatible message broker.
//!
//! `magnetar standalone | broker | bookie | admin | produce | consume | perf`; see `--help`.
//! Exit codes are those of [`cli`]: 0 success, 1 failure, 2 usage error, 3 not built yet.

mod admin;
mod bookie;
mod broker;
mod cli;
mod client;
mod config;
mod standalone;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::config::{BookieFlags, CONFIG_FILE_ENV, Config, FlagOverrides};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Prints help/version (exit 0) or the usage error (exit 2).
        Err(err) => err.exit(),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("magnetar: error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let file = config_file(cli.command.as_ref());
    let flags = match &cli.command {
        Some(Command::Standalone(args)) => FlagOverrides {
            data_dir: args.data_dir.clone(),
            standalone_bind_address: args.bind_address.clone(),
            standalone_broker_port: args.broker_port,
            standalone_admin_port: args.admin_port,
            ..FlagOverrides::default()
        },
        Some(Command::Bookie(args)) => FlagOverrides {
            bookie: BookieFlags {
                data_dir: args.data_dir.clone(),
                bind_address: args.bind_address.clone(),
                port: args.port,
                advertised_address: args.advertised_address.clone(),
                zone: args.zone.clone(),
            },
            ..FlagOverrides::default()
        },
        _ => FlagOverrides::default(),
    };
    let config = Config::load(file.as_deref(), &flags)?;

    if cli.print_config {
        print!("{}", config.to_toml()?);
        return Ok(EXIT_OK);
    }
    let Some(command) = cli.command else {
        eprintln!("{}", <Cli as clap::CommandFactory>::command().render_help());
        return Ok(EXIT_USAGE);
    };

    init_tracing(&config)?;
    tracing::debug!(command = command.name(), config_file = ?file, "configuration loaded");

    match command {
        Command::Admin(args) => admin::run(args, &config),
        Command::Bookie(_) => bookie::run(&config),
        Command::Standalone(_) => standalone::run(&config),
        Command::Broker(_) => broker::run(&config),
        Command::Produce(args) => client::produce(args, &config),
        Command::Consume(args) => client::consume(args, &config),
        Command::Perf(args) => client::perf(args, &config),
    }
}

/// `--config FILE` of the subcommand, else `MAGNETAR_CONFIG` (an empty value counts as unset).
fn config_file(command: Option<&Command>) -> Option<PathBuf> {
    command
        .and_then(Command::config_file)
        .cloned()
        .or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from))
        .filter(|path| !path.as_os_str().is_empty())
}

/// Diagnostics go to stderr, filtered by `log.level` (which `RUST_LOG` and
/// `MAGNETAR_LOG__LEVEL` override through the configuration layers).
fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
