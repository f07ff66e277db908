//! The `phasegate` binary: a thin CLI over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use phasegate::api::DatabaseMigration;
use phasegate::controller::{self, ExecutorConfig};
use phasegate::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "phasegate", version, about = "Expand/contract PostgreSQL migrations gated on Kubernetes rollouts")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "PHASEGATE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster).
    Controller(ControllerArgs),
    /// Print the DatabaseMigration CustomResourceDefinition as YAML.
    Crd,
    /// Apply one phase's SQL to the database (what an executor Job runs).
    Apply(phasegate::executor::ApplyArgs),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "PHASEGATE_NAMESPACE")]
    namespace: Option<String>,
    /// Image with the `phasegate` binary that runs inline `sql` phases.
    #[arg(long, env = "PHASEGATE_EXECUTOR_IMAGE", default_value = concat!("phasegate:", env!("CARGO_PKG_VERSION")))]
    executor_image: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Crd => match serde_yaml::to_string(&DatabaseMigration::crd()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Controller(args) => {
            telemetry::init(cli.log_format, "info,kube_runtime=warn");
            runtime.block_on(async {
                let client = match kube::Client::try_default().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build a Kubernetes client from kubeconfig or the in-cluster environment");
                        return ExitCode::FAILURE;
                    }
                };
                let config = controller::Config {
                    namespace: args.namespace,
                    executor: ExecutorConfig { image: args.executor_image },
                };
                match controller::run(client, config).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %e, "controller stopped");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Apply(args) => {
            telemetry::init(cli.log_format, "info");
            runtime.block_on(phasegate::executor::apply(args))
        }
    }
}
