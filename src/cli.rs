//! The command line of `magnetar`: one binary, one subcommand per role.
//!
//! The subcommand set is the product's final shape; the ones whose code has not landed yet answer
//! "not built yet" and exit with [`EXIT_NOT_BUILT`], so scripts and operators can tell "this build
//! lacks the feature" apart from a usage error (2) or a failure (1).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Success.
pub const EXIT_OK: u8 = 0;
/// A failure: bad configuration, or an error at run time. The message is on stderr.
pub const EXIT_FAILURE: u8 = 1;
/// A usage error: unknown flag, missing argument (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// The subcommand exists in the product but is not in this build yet (every subcommand is built
/// now; the code stays reserved).
#[allow(dead_code)]
pub const EXIT_NOT_BUILT: u8 = 3;

const AFTER_HELP: &str = "\
Configuration: defaults < TOML file (--config FILE or MAGNETAR_CONFIG) < environment variables
MAGNETAR_<SECTION>__<KEY> (e.g. MAGNETAR_METADATA__BACKEND=etcd) < command-line flags.
Every key and its default: docs/CONFIGURATION.md. See the result with --print-config.

Exit codes: 0 success; 1 failure (bad configuration, error at run time); 2 usage error;
3 subcommand not built yet in this release.";

/// Magnetar: a Pulsar-compatible message broker.
#[derive(Debug, Parser)]
#[command(name = "magnetar", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Print the effective configuration (defaults, file, environment and flags merged) as TOML
    /// and exit.
    #[arg(long, global = true)]
    pub print_config: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The roles of the one binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole cluster in one process: broker, bookie and embedded metadata.
    Standalone(StandaloneArgs),
    /// Run a stateless serving broker: Pulsar protocol on 6650, admin REST on 8080.
    Broker(ServerArgs),
    /// Run a bookie: journal and entry storage for ledgers, served over gRPC.
    Bookie(BookieArgs),
    /// Manage tenants, namespaces, topics and subscriptions through the admin REST API.
    Admin(crate::admin::AdminArgs),
    /// Publish messages to a topic from the command line.
    Produce(crate::client::ProduceArgs),
    /// Receive messages from a subscription and print them.
    Consume(crate::client::ConsumeArgs),
    /// Generate produce/consume load and report throughput and latency.
    Perf(crate::client::PerfArgs),
}

/// Flags of `magnetar standalone` (final).
#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Directory for all standalone state: metadata, journals, ledgers
    /// [config: standalone.data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// IP address the broker listens on [config: standalone.bind_address].
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<String>,

    /// Pulsar binary protocol port; 0 picks a free one [config: standalone.broker_port].
    #[arg(long, value_name = "PORT")]
    pub broker_port: Option<u16>,

    /// Admin REST API port; 0 picks a free one [config: standalone.admin_port].
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,

    #[command(flatten)]
    pub config: ConfigArg,
}

/// Flags of `magnetar bookie`. It prints `magnetar bookie: serving HOST:PORT` on stdout once it
/// serves, and runs until SIGINT or SIGTERM.
#[derive(Debug, Args)]
pub struct BookieArgs {
    /// Directory for the bookie's journal and entry storage [config: bookie.data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// gRPC port; 0 picks a free one [config: bookie.port].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// IP address to listen on [config: bookie.bind_address].
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<String>,

    /// Address clients reach this bookie at, HOST or HOST:PORT; also its identity
    /// [config: bookie.advertised_address].
    #[arg(long, value_name = "HOST[:PORT]")]
    pub advertised_address: Option<String>,

    /// Zone label, so ledgers spread their replicas over zones [config: bookie.zone].
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,

    #[command(flatten)]
    pub config: ConfigArg,
}

/// Flags of the server roles not built yet (`broker`).
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

/// `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// TOML configuration file.
    #[arg(long = "config", value_name = "FILE", env = "MAGNETAR_CONFIG")]
    pub file: Option<PathBuf>,
}

impl Command {
    /// The subcommand's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Standalone(_) => "standalone",
            Command::Broker(_) => "broker",
            Command::Bookie(_) => "bookie",
            Command::Admin(_) => "admin",
            Command::Produce(_) => "produce",
            Command::Consume(_) => "consume",
            Command::Perf(_) => "perf",
        }
    }

    /// The `--config FILE` given to this subcommand, if it takes one.
    pub fn config_file(&self) -> Option<&PathBuf> {
        match self {
            Command::Standalone(a) => a.config.file.as_ref(),
            Command::Broker(a) => a.config.file.as_ref(),
            Command::Bookie(a) => a.config.file.as_ref(),
            Command::Admin(a) => a.config.file.as_ref(),
            Command::Produce(a) => a.client.config.file.as_ref(),
            Command::Consume(a) => a.client.config.file.as_ref(),
            Command::Perf(a) => match &a.command {
                crate::client::PerfCommand::Produce(p) => p.client.config.file.as_ref(),
                crate::client::PerfCommand::Consume(c) => c.client.config.file.as_ref(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
