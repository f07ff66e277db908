//! `phasegate plan`: command-line arguments and exit codes around [`super::plan`].
//!
//! Exit codes: 0 planned, nothing refused; 1 planned, but a statement failed, lint refused
//! one or a phase's SQL does not parse; 2 the plan could not be made (inputs, server,
//! database, cluster).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{PhaseKind, Request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlPhase {
    Expand,
    Contract,
}

/// Run a migration's phases against a throwaway PostgreSQL loaded with your schema, and report
/// per statement the locks, rewrites, index builds, lint findings and estimated duration.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 planned; 1 planned, but a statement failed or lint refused one; 2 the plan could not be made."
)]
pub struct PlanArgs {
    /// DatabaseMigration YAML files (`.yaml`/`.yml`) or SQL files, planned in order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Schema to load first (repeatable, in order): `pg_dump --schema-only` output or other
    /// SQL, or earlier migrations' YAML (their expand and contract are applied).
    #[arg(long, value_name = "FILE")]
    pub schema: Vec<PathBuf>,
    /// Plan on a scratch copy of this database (created and dropped on its server; needs
    /// CREATEDB) instead of starting a throwaway server.
    #[arg(
        long,
        env = "PHASEGATE_PLAN_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// Directory with initdb and pg_ctl [default: PATH, else the newest /usr/lib/postgresql/*/bin].
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
    /// Production table sizes, CSV `schema,table,rows,table_bytes,index_bytes`, as
    /// examples/plan/table-stats.sql exports them: gives duration estimates.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// MiB per second a rewrite, index build or validation scan is assumed to process.
    #[arg(long, default_value_t = 100.0, value_name = "MIB_PER_SEC")]
    pub scan_rate: f64,
    /// Rows per second a backfill is assumed to fill.
    #[arg(long, default_value_t = 5000.0, value_name = "ROWS_PER_SEC")]
    pub backfill_rate: f64,
    /// The phase plain SQL files are linted as.
    #[arg(long, value_enum, default_value = "expand")]
    pub phase: SqlPhase,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "markdown")]
    pub output: Output,
    /// Also list the workloads that will gate contract, read from this cluster (read-only).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: the current one].
    #[arg(long, requires = "kubeconfig")]
    pub context: Option<String>,
    /// Namespace of the targets [default: the migration's, else the context's].
    #[arg(long, short = 'n', requires = "kubeconfig")]
    pub namespace: Option<String>,
}

/// Runs `phasegate plan`.
pub async fn run(args: PlanArgs) -> ExitCode {
    if args.scan_rate <= 0.0 || args.backfill_rate <= 0.0 {
        eprintln!("error: --scan-rate and --backfill-rate must be positive");
        return ExitCode::from(2);
    }
    let req = Request {
        migrations: args.files,
        sql_phase: Some(match args.phase {
            SqlPhase::Expand => PhaseKind::Expand,
            SqlPhase::Contract => PhaseKind::Contract,
        }),
        schema: args.schema,
        url: args.url.filter(|u| !u.is_empty()),
        pg_bindir: args.pg_bindir,
        stats: args.stats,
        bytes_per_second: args.scan_rate * 1024.0 * 1024.0,
        backfill_rows_per_second: args.backfill_rate,
        kube: args.kubeconfig.map(|kubeconfig| super::targets::KubeArgs {
            kubeconfig,
            context: args.context,
            namespace: args.namespace,
        }),
    };
    let plan = match super::plan(&req).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match args.output {
        Output::Markdown => super::markdown(&plan),
        Output::Json => match serde_json::to_string_pretty(&plan) {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("error: cannot render JSON: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::from(2);
    }
    if plan.has_problems() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
