//! The `phasegate` binary: a thin CLI over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use phasegate::api::DatabaseMigration;
use phasegate::controller::{self, ExecutorConfig, ExecutorPod};
use phasegate::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "phasegate",
    version,
    about = "Expand/contract PostgreSQL migrations gated on Kubernetes rollouts"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PHASEGATE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
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
    /// Fill data between expand and contract in throttled, resumable batches (what a
    /// backfill Job runs).
    Backfill(phasegate::executor::backfill::BackfillArgs),
    /// Wait until expand for an app version is applied, as the database's ledger says (an
    /// init container of the app's pods; needs no Kubernetes rights).
    WaitSchema(phasegate::wait_schema::WaitSchemaArgs),
    /// Lint SQL files for a phase with PostgreSQL's own parser (for CI).
    Lint(phasegate::lint::cli::LintArgs),
    /// Run a migration's phases against a throwaway PostgreSQL loaded with the schema and
    /// report locks, rewrites, index builds, lint and estimated durations (for pull requests).
    Plan(phasegate::plan::cli::PlanArgs),
    /// Approve contract of a Manual migration (sets phasegate.dev/approve: "true").
    Approve(phasegate::plugin::TargetArgs),
    /// Retry the failed phase of a Failed migration (sets phasegate.dev/retry to a new value).
    Retry(phasegate::plugin::TargetArgs),
    /// Show a readable summary of one migration and its targets; without NAME, list the
    /// namespace's migrations (`-o json|yaml` for the objects).
    Status(phasegate::plugin::TargetArgs),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "PHASEGATE_NAMESPACE")]
    namespace: Option<String>,
    /// Image with the `phasegate` binary that runs inline `sql` phases.
    #[arg(long, env = "PHASEGATE_EXECUTOR_IMAGE", default_value = concat!("phasegate:", env!("CARGO_PKG_VERSION")))]
    executor_image: String,
    /// Address of /metrics, /healthz and /readyz (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "PHASEGATE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Address of the commit grant endpoint contract executors ask before COMMIT (port 0
    /// picks a free port)
    #[arg(long, env = "PHASEGATE_GRANT_ADDR", default_value = "0.0.0.0:8082")]
    grant_addr: std::net::SocketAddr,
    /// The URL executor pods reach that endpoint at (the chart's Service)
    /// [default outside a pod: http://127.0.0.1:<grant port>; required in a pod]
    #[arg(long, env = "PHASEGATE_GRANT_URL_FOR_EXECUTORS", value_name = "URL")]
    grant_url: Option<String>,
    /// Elect a leader on a Lease so that only one replica reconciles (`--leader-election=false` to turn off)
    /// [default: on in a pod (KUBERNETES_SERVICE_HOST is set), off elsewhere]
    #[arg(long, env = "PHASEGATE_LEADER_ELECTION", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    leader_election: Option<bool>,
    /// Namespace of the leader Lease [default: $POD_NAMESPACE, else --namespace, else `default`]
    #[arg(long, env = "PHASEGATE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease [default: `phasegate`, or `phasegate-<namespace>` with --namespace]
    #[arg(long, env = "PHASEGATE_LEASE_NAME")]
    lease_name: Option<String>,
    /// This replica's identity in the Lease; unique per replica [default: $POD_NAME, else `<hostname>-<pid>`]
    #[arg(long, env = "PHASEGATE_LEASE_IDENTITY")]
    lease_identity: Option<String>,
    /// Seconds the Lease stays valid after a renewal: the longest failover after a leader dies.
    #[arg(
        long,
        env = "PHASEGATE_LEASE_DURATION",
        default_value_t = 15,
        value_name = "SECONDS"
    )]
    lease_duration: u64,
    /// The leader renews the Lease this many seconds before it expires (less than --lease-duration).
    #[arg(
        long,
        env = "PHASEGATE_LEASE_GRACE",
        default_value_t = 5,
        value_name = "SECONDS"
    )]
    lease_grace: u64,
    /// JSON or YAML file with the policy for user-supplied Job templates (fields of
    /// `JobPolicy`: enabled, allowedServiceAccounts, allowServiceAccountToken,
    /// allowedCapabilities, allowedImages) [default: the built-in safe policy]
    #[arg(long, env = "PHASEGATE_JOB_POLICY", value_name = "FILE")]
    job_policy: Option<std::path::PathBuf>,
    /// JSON with pod settings for every executor Job: nodeSelector, tolerations, annotations,
    /// priorityClassName, resources [default: none]
    #[arg(long, env = "PHASEGATE_EXECUTOR_POD", value_name = "JSON")]
    executor_pod: Option<String>,
}

fn main() -> ExitCode {
    // `kubectl phasegate -n shop status NAME`: the plugin's flags may come before its command.
    let cli = Cli::parse_from(phasegate::plugin::hoist_flags(
        std::env::args_os().collect(),
    ));
    // `apply` waits on the database nearly all the time: one thread, so that no round trip
    // hands its reply from one thread to another (a fleet's tenants interleave on it); measured
    // 5-9 % faster on `make bench-fanout`, with less CPU.
    let mut builder = match cli.command {
        Command::Apply(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
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
            runtime.block_on(run_controller(args))
        }
        Command::Approve(args) => runtime.block_on(phasegate::plugin::run(
            phasegate::plugin::Action::Approve,
            args,
        )),
        Command::Retry(args) => runtime.block_on(phasegate::plugin::run(
            phasegate::plugin::Action::Retry,
            args,
        )),
        Command::Status(args) => runtime.block_on(phasegate::plugin::run(
            phasegate::plugin::Action::Status,
            args,
        )),
        Command::Apply(args) => {
            telemetry::init(cli.log_format, "info");
            runtime.block_on(phasegate::executor::apply(args))
        }
        Command::Backfill(args) => {
            telemetry::init(cli.log_format, "info");
            runtime.block_on(phasegate::executor::backfill::run(args))
        }
        Command::WaitSchema(args) => {
            telemetry::init(cli.log_format, "info");
            runtime.block_on(phasegate::wait_schema::run(args))
        }
        Command::Lint(args) => phasegate::lint::cli::run(args),
        Command::Plan(args) => runtime.block_on(phasegate::plan::cli::run(args)),
    }
}

/// `phasegate controller`: serve /metrics, /healthz and /readyz, then run the controller,
/// behind leader election when it is on.
async fn run_controller(args: ControllerArgs) -> ExitCode {
    use std::sync::Arc;

    use phasegate::leader::{self, LeaseConfig};
    use phasegate::metrics::Metrics;
    use phasegate::server::{self, Health, Role};

    // A bad policy file stops the operator before it touches the cluster.
    let job_policy = match load_job_policy(args.job_policy.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the Job policy");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        policy = %serde_json::to_string(&job_policy).unwrap_or_default(),
        "Job template policy"
    );
    let executor_pod = match ExecutorPod::from_json(args.executor_pod.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the executor pod settings (PHASEGATE_EXECUTOR_POD)");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        settings = %serde_json::to_string(&executor_pod).unwrap_or_default(),
        "executor pod settings"
    );
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a Kubernetes client from kubeconfig or the in-cluster environment");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    health.tick();
    if let Err(e) = server::serve(args.metrics_addr, metrics.clone(), health.clone()).await {
        tracing::error!(error = %e, "cannot serve metrics and health endpoints");
        return ExitCode::FAILURE;
    }
    let grants = Arc::new(controller::fence::GrantDesk::new(health.clone()));
    let grant_addr = match server::serve_grants(args.grant_addr, grants.clone()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve commit grants");
            return ExitCode::FAILURE;
        }
    };
    // Executors must reach the endpoint; guessing an in-cluster address would leave every
    // contract waiting for a grant that never comes.
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let grant_url = match args.grant_url.filter(|u| !u.trim().is_empty()) {
        Some(u) => u,
        None if !in_pod => format!("http://127.0.0.1:{}", grant_addr.port()),
        None => {
            tracing::error!("--grant-url (PHASEGATE_GRANT_URL_FOR_EXECUTORS) is required in a pod: the URL executor pods reach this operator's commit grant endpoint at (the chart sets it to its Service)");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(url = %grant_url, "contract executors ask for commit grants here");
    let ops = controller::Ops {
        metrics,
        health,
        shutdown: leader::shutdown_on_signal(),
        grants,
    };
    let elect = args
        .leader_election
        .unwrap_or_else(|| std::env::var_os("KUBERNETES_SERVICE_HOST").is_some());
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let lease = LeaseConfig {
        name: non_empty(args.lease_name)
            .unwrap_or_else(|| LeaseConfig::default_name(args.namespace.as_deref())),
        namespace: non_empty(args.lease_namespace)
            .or_else(|| non_empty(std::env::var("POD_NAMESPACE").ok()))
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".to_string()),
        identity: non_empty(args.lease_identity).unwrap_or_else(LeaseConfig::default_identity),
        duration_secs: args.lease_duration,
        grace_secs: args.lease_grace,
    };
    let config = controller::Config {
        namespace: args.namespace,
        executor: ExecutorConfig {
            image: args.executor_image,
            job_policy,
            pod: executor_pod,
            grant_url,
        },
    };
    let result = if elect {
        let (health, metrics, shutdown) = (
            ops.health.clone(),
            ops.metrics.clone(),
            ops.shutdown.clone(),
        );
        leader::run_elected(client.clone(), lease, health, metrics, shutdown, || {
            controller::run(client, config, ops)
        })
        .await
    } else {
        tracing::info!(
            "leader election is off: this process reconciles on its own (run one replica only)"
        );
        ops.health.set_role(Role::Leader);
        ops.metrics.leader.set(1);
        controller::run(client, config, ops).await
    };
    match result {
        Ok(()) => {
            tracing::info!("controller stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "controller stopped");
            ExitCode::FAILURE
        }
    }
}

/// The admin's Job policy from `--job-policy`; none (or an empty path) is the safe default.
/// Read once at start: the chart rolls the operator when the policy changes.
fn load_job_policy(path: Option<&std::path::Path>) -> Result<phasegate::policy::JobPolicy, String> {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(phasegate::policy::JobPolicy::default());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    phasegate::policy::JobPolicy::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
}
