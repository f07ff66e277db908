//! The `kubectl` plugin commands: `phasegate approve`, `phasegate retry` and
//! `phasegate status`, against the current kubeconfig context.
//!
//! Installed as `kubectl-phasegate` (a symlink to the `phasegate` binary) they become
//! `kubectl phasegate approve …`: kubectl passes the arguments after `phasegate` through
//! unchanged, so the same clap subcommands serve both spellings.
//!
//! Decisions are pure ([`approve_plan`], [`retry_plan`], [`render::render_status`]); this
//! module only reads the object and patches one annotation.

pub mod render;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config};

use crate::api::{Approval, DatabaseMigration, Phase, ANNOTATION_APPROVE, ANNOTATION_RETRY};
pub use render::{render_status, Style};

/// Which migration, and which cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// The DatabaseMigration's name (`status` without a name lists the namespace's
    /// migrations).
    pub name: Option<String>,
    /// `status` only: print the object (or the list) as `json` or `yaml` instead of a summary.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// Its namespace (default: the namespace of the kubeconfig context, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// Machine-readable output of `status`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

/// The plugin's flags that kubectl users put before the command (`kubectl phasegate -n shop
/// status NAME`): moved after the command so each subcommand parses them. Other arguments
/// keep their order.
pub fn hoist_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let commands = ["approve", "retry", "status"];
    let Some(pos) = args
        .iter()
        .skip(1)
        .position(|a| a.to_str().is_some_and(|a| commands.contains(&a)))
        .map(|p| p + 1)
    else {
        return args;
    };
    let mut before = Vec::new();
    let mut hoisted = Vec::new();
    let mut i = 1;
    while i < pos {
        let a = args[i].to_str().unwrap_or_default();
        let with_value = [
            "-n",
            "--namespace",
            "--context",
            "--kubeconfig",
            "-o",
            "--output",
        ];
        if with_value.contains(&a) && i + 1 < pos {
            hoisted.extend_from_slice(&args[i..i + 2]);
            i += 2;
            continue;
        }
        let joined = ["--namespace=", "--context=", "--kubeconfig=", "--output="];
        if joined.iter().any(|p| a.starts_with(p))
            || (a.starts_with("-n") && a.len() > 2)
            || (a.starts_with("-o") && a.len() > 2)
        {
            hoisted.push(args[i].clone());
        } else {
            before.push(args[i].clone());
        }
        i += 1;
    }
    let mut out = vec![args[0].clone()];
    out.extend(before);
    out.push(args[pos].clone());
    out.extend(hoisted);
    out.extend_from_slice(&args[pos + 1..]);
    out
}

/// One plugin command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Approve,
    Retry,
    Status,
}

/// What `approve` does with a migration as it is.
#[derive(Debug, PartialEq, Eq)]
pub enum ApprovePlan {
    /// Set `phasegate.dev/approve: "true"`, then tell the user this.
    Annotate(String),
    /// Change nothing; not an error (the user's intent already holds). Tell them this.
    Nothing(String),
}

/// Decide what `phasegate approve` does (pure).
///
/// With `approval: Automatic` contract never waits for approval, so the annotation would
/// have no effect now — and would silently pre-approve if someone later switched to
/// `Manual`. We therefore leave the object unchanged and say so (exit 0).
pub fn approve_plan(dbm: &DatabaseMigration) -> ApprovePlan {
    let name = dbm.metadata.name.clone().unwrap_or_default();
    if dbm.spec.contract.approval == Approval::Automatic {
        return ApprovePlan::Nothing(format!(
            "{name}: contract.approval is Automatic, so contract does not wait for approval; the annotation would have no effect and was not set"
        ));
    }
    if render::is_approved(dbm) {
        return ApprovePlan::Nothing(format!(
            "{name}: already approved ({ANNOTATION_APPROVE}=true)"
        ));
    }
    let phase = dbm.status.as_ref().and_then(|s| s.phase);
    match phase {
        Some(Phase::Contracting) | Some(Phase::Succeeded) => {
            ApprovePlan::Nothing(format!("{name}: contract is already {}; nothing to approve", if phase == Some(Phase::Succeeded) { "applied" } else { "running" }))
        }
        Some(Phase::AwaitingApproval) => ApprovePlan::Annotate(format!("{name}: approved; contract starts now")),
        Some(Phase::Failed) => ApprovePlan::Annotate(format!(
            "{name}: approved; the migration is Failed, so contract runs only after `phasegate retry {name}` and a complete rollout"
        )),
        _ => ApprovePlan::Annotate(format!(
            "{name}: approved in advance; contract still waits for the rollout to complete{}",
            dbm.spec.contract.delay.as_deref().map(|d| format!(" and the {d} delay")).unwrap_or_default()
        )),
    }
}

/// Decide what `phasegate retry` does (pure): `Ok(message)` to set the annotation, or
/// `Err(message)` when there is nothing to retry. The operator records and ignores a retry
/// value it sees while nothing has failed, so setting one then would do nothing.
pub fn retry_plan(dbm: &DatabaseMigration) -> Result<String, String> {
    let name = dbm.metadata.name.clone().unwrap_or_default();
    let status = dbm.status.clone().unwrap_or_default();
    match status.phase {
        Some(Phase::Failed) if refused_before_running(&status) => Err(format!(
            "{name} was refused before anything ran ({}): a retry would check the same spec again and nothing would run. {}",
            crate::planner::conditions::reason_of(&status.conditions, crate::planner::conditions::STALLED)
                .unwrap_or("Failed"),
            FIX_IN_PLACE
        )),
        Some(Phase::Failed) => {
            let what = match (&status.expand, &status.contract) {
                (_, Some(c)) if c.finished_at.is_some() && !c.succeeded => format!("contract runs again (attempt {})", c.attempts + 1),
                (Some(e), _) if !e.succeeded => format!("expand runs again (attempt {})", e.attempts + 1),
                _ if status.rollout_timed_out_at.is_some() => {
                    "the rollout timeout starts again from now; contract runs once every target has rolled out".to_string()
                }
                _ => "the failed step runs again".to_string(),
            };
            Ok(format!("{name}: retry requested; {what}"))
        }
        Some(p) => Err(format!(
            "{name} is {p}, not Failed: there is nothing to retry (a retry value set now would be recorded and ignored)"
        )),
        None => Err(format!("{name} has not been observed by the operator yet: there is nothing to retry")),
    }
}

/// What to do about a migration refused before anything ran (the spec is checked again on
/// every change, so no retry is needed).
pub const FIX_IN_PLACE: &str = "Fix the spec in place (in git or with kubectl edit; spec.expand and contract stay editable while nothing has run) or add a spec.safety.allow rule: the migration resumes by itself.";

/// Failed before any expand attempt started: refused by the linter or the Job policy, or an
/// invalid spec. Nothing ran, and a retry would change nothing.
pub fn refused_before_running(status: &crate::api::DatabaseMigrationStatus) -> bool {
    status.phase == Some(Phase::Failed) && status.expand.as_ref().is_none_or(|e| e.attempts == 0)
}

/// A fresh `phasegate.dev/retry` value: the current time, made distinct from `previous`.
pub fn fresh_retry_value(now: k8s_openapi::jiff::Timestamp, previous: &[Option<&str>]) -> String {
    let mut value = now.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string();
    let mut n = 1;
    while previous.iter().flatten().any(|p| *p == value) {
        n += 1;
        value = format!("{}-{n}", now.strftime("%Y-%m-%dT%H:%M:%S%.fZ"));
    }
    value
}

/// Whether `status` may use colour: stdout is a terminal, `NO_COLOR` is unset or empty
/// (<https://no-color.org>) and `TERM` is not `dumb`.
pub fn detect_style() -> Style {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    Style {
        color: std::io::stdout().is_terminal() && !no_color && !dumb,
    }
}

/// A client for the chosen context and the namespace to use.
async fn connect(args: &TargetArgs) -> Result<(Client, String, String), String> {
    let kubeconfig = match &args.kubeconfig {
        Some(p) => Kubeconfig::read_from(p)
            .map_err(|e| format!("cannot read kubeconfig {}: {e}", p.display()))?,
        None => match Kubeconfig::read() {
            Ok(kc) => kc,
            Err(KubeconfigError::FindPath) => return in_cluster(args),
            Err(KubeconfigError::ReadConfig(e, _))
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::env::var_os("KUBECONFIG").is_none() =>
            {
                return in_cluster(args)
            }
            Err(KubeconfigError::ReadConfig(e, path)) => {
                return Err(format!(
                    "cannot read kubeconfig {}: {e} (check KUBECONFIG or pass --kubeconfig)",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("cannot load kubeconfig: {e}")),
        },
    };
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let context = args
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let config = Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| match e {
        KubeconfigError::CurrentContextNotSet => "the kubeconfig has no current context: run `kubectl config use-context NAME` or pass --context".to_string(),
        KubeconfigError::LoadContext(c) => format!("context {c:?} is not in the kubeconfig"),
        e => format!("cannot use kubeconfig context {context:?}: {e}"),
    })?;
    finish(config, args, format!("context {context:?}"))
}

fn in_cluster(args: &TargetArgs) -> Result<(Client, String, String), String> {
    match Config::incluster() {
        Ok(config) => finish(config, args, "the in-cluster service account".into()),
        Err(_) => Err(
            "no kubeconfig found: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config"
                .into(),
        ),
    }
}

fn finish(
    config: Config,
    args: &TargetArgs,
    origin: String,
) -> Result<(Client, String, String), String> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let where_ = format!("{origin}, {}", config.cluster_url);
    let client = Client::try_from(config)
        .map_err(|e| format!("cannot build a Kubernetes client for {where_}: {e}"))?;
    Ok((client, ns, where_))
}

fn describe(e: kube::Error, name: &str, ns: &str, where_: &str) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 && s.message.contains("could not find the requested resource") => format!(
            "the DatabaseMigration API is not installed on the cluster ({where_}): install the CRD (`phasegate crd | kubectl apply --server-side -f -` or the Helm chart)"
        ),
        kube::Error::Api(s) if s.code == 404 => format!("DatabaseMigration {name:?} not found in namespace {ns:?} ({where_})"),
        kube::Error::Api(s) if s.code == 403 => format!("forbidden ({where_}): {}", s.message),
        kube::Error::Api(s) => format!("the API server refused ({where_}): {} ({})", s.message, s.code),
        e => format!("cannot reach the cluster ({where_}): {e}"),
    }
}

/// Run one plugin command; messages go to stdout, errors to stderr.
pub async fn run(action: Action, args: TargetArgs) -> ExitCode {
    match run_inner(action, &args).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(action: Action, args: &TargetArgs) -> Result<String, String> {
    if args.output.is_some() && action != Action::Status {
        return Err("-o/--output is for `status`".into());
    }
    let (client, ns, where_) = connect(args).await?;
    let api: Api<DatabaseMigration> = Api::namespaced(client, &ns);
    let Some(name) = args.name.as_deref() else {
        if action != Action::Status {
            return Err("which migration? give its NAME".into());
        }
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| describe(e, "", &ns, &where_))?;
        return match args.output {
            Some(o) => {
                let items: Vec<serde_json::Value> = list
                    .items
                    .iter()
                    .map(|m| serde_json::to_value(m).unwrap_or_default())
                    .collect();
                format_output(
                    o,
                    &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
                )
            }
            None => Ok(render::render_list(&list.items, &ns)),
        };
    };
    let dbm = api
        .get(name)
        .await
        .map_err(|e| describe(e, name, &ns, &where_))?;
    let annotate = |key: &'static str, value: String| {
        let api = api.clone();
        async move {
            let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| describe(e, name, &ns, &where_))
                .map(|_| ())
        }
    };
    match action {
        Action::Status => match args.output {
            Some(o) => format_output(o, &serde_json::to_value(&dbm).map_err(|e| e.to_string())?),
            None => Ok(render_status(&dbm, detect_style())),
        },
        Action::Approve => match approve_plan(&dbm) {
            ApprovePlan::Nothing(msg) => Ok(format!("{msg}\n")),
            ApprovePlan::Annotate(msg) => {
                annotate(ANNOTATION_APPROVE, "true".into()).await?;
                Ok(format!("{msg}\n"))
            }
        },
        Action::Retry => {
            let msg = retry_plan(&dbm)?;
            let current = dbm
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_RETRY))
                .map(String::as_str);
            let observed = dbm
                .status
                .as_ref()
                .and_then(|s| s.observed_retry.as_deref());
            let value =
                fresh_retry_value(k8s_openapi::jiff::Timestamp::now(), &[current, observed]);
            annotate(ANNOTATION_RETRY, value.clone()).await?;
            Ok(format!("{msg} ({ANNOTATION_RETRY}={value})\n"))
        }
    }
}

fn format_output(o: Output, v: &serde_json::Value) -> Result<String, String> {
    match o {
        Output::Json => serde_json::to_string_pretty(v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml::to_string(v).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseMigrationStatus, PhaseStatus};

    fn argv(s: &str) -> Vec<std::ffi::OsString> {
        s.split_whitespace().map(Into::into).collect()
    }

    #[test]
    fn plugin_flags_before_the_command_are_moved_after_it() {
        assert_eq!(
            hoist_flags(argv("phasegate -n shop --context=kind status m -o json")),
            argv("phasegate status -n shop --context=kind m -o json")
        );
        assert_eq!(
            hoist_flags(argv("phasegate --log-format json -nshop retry m")),
            argv("phasegate --log-format json retry -nshop m")
        );
        assert_eq!(
            hoist_flags(argv("phasegate controller --namespace shop")),
            argv("phasegate controller --namespace shop"),
            "other commands are left alone"
        );
    }

    fn migration(approval: &str, phase: Option<Phase>) -> DatabaseMigration {
        let mut m: DatabaseMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "phasegate.dev/v1alpha1",
            "kind": "DatabaseMigration",
            "metadata": {"name": "m", "namespace": "shop"},
            "spec": {
                "appVersion": "2.0.0",
                "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
                "expand": {"sql": "SELECT 1"},
                "contract": {"sql": "SELECT 1", "approval": approval},
                "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]}
            }
        }))
        .expect("migration");
        m.status = phase.map(|p| DatabaseMigrationStatus {
            phase: Some(p),
            ..Default::default()
        });
        m
    }

    #[test]
    fn approve_is_a_no_op_when_approval_is_automatic() {
        for phase in [Some(Phase::AwaitingRollout), Some(Phase::Failed), None] {
            assert!(
                matches!(approve_plan(&migration("Automatic", phase)), ApprovePlan::Nothing(m) if m.contains("Automatic"))
            );
        }
    }

    #[test]
    fn approve_annotates_a_manual_migration_until_contract_runs() {
        assert_eq!(
            approve_plan(&migration("Manual", Some(Phase::AwaitingApproval))),
            ApprovePlan::Annotate("m: approved; contract starts now".into())
        );
        assert!(
            matches!(approve_plan(&migration("Manual", Some(Phase::AwaitingRollout))), ApprovePlan::Annotate(m) if m.contains("in advance"))
        );
        assert!(
            matches!(approve_plan(&migration("Manual", Some(Phase::Failed))), ApprovePlan::Annotate(m) if m.contains("retry"))
        );
        assert!(matches!(
            approve_plan(&migration("Manual", Some(Phase::Succeeded))),
            ApprovePlan::Nothing(_)
        ));
        let mut approved = migration("Manual", Some(Phase::AwaitingApproval));
        approved.metadata.annotations =
            Some([(ANNOTATION_APPROVE.to_string(), "true".to_string())].into());
        assert!(
            matches!(approve_plan(&approved), ApprovePlan::Nothing(m) if m.contains("already approved"))
        );
    }

    #[test]
    fn retry_only_when_failed_and_names_the_next_attempt() {
        assert!(
            retry_plan(&migration("Automatic", Some(Phase::AwaitingRollout)))
                .unwrap_err()
                .contains("not Failed")
        );
        assert!(retry_plan(&migration("Automatic", None))
            .unwrap_err()
            .contains("not been observed"));
        let mut failed = migration("Automatic", Some(Phase::Failed));
        failed.status.as_mut().expect("status").expand = Some(PhaseStatus {
            attempts: 1,
            ..Default::default()
        });
        assert_eq!(
            retry_plan(&failed).expect("retry"),
            "m: retry requested; expand runs again (attempt 2)"
        );
        let st = failed.status.as_mut().expect("status");
        st.expand = Some(PhaseStatus {
            attempts: 1,
            succeeded: true,
            ..Default::default()
        });
        st.contract = Some(PhaseStatus {
            attempts: 2,
            finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        });
        assert_eq!(
            retry_plan(&failed).expect("retry"),
            "m: retry requested; contract runs again (attempt 3)"
        );
        let st = failed.status.as_mut().expect("status");
        st.contract = None;
        st.rollout_timed_out_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            retry_plan(&failed).expect("retry"),
            "m: retry requested; the rollout timeout starts again from now; contract runs once every target has rolled out"
        );
    }

    #[test]
    fn retry_of_a_refusal_says_nothing_would_run_and_what_to_do() {
        let mut refused = migration("Automatic", Some(Phase::Failed));
        refused.status.as_mut().expect("status").conditions.push(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Stalled".into(),
                status: "True".into(),
                reason: "SqlRefused".into(),
                message: "spec.expand.sql refused before anything ran".into(),
                observed_generation: Some(1),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            },
        );
        let err = retry_plan(&refused).expect_err("nothing to retry");
        assert!(
            err.starts_with("m was refused before anything ran (SqlRefused)"),
            "{err}"
        );
        assert!(
            err.contains("nothing would run") && err.contains("Fix the spec in place"),
            "{err}"
        );
        assert!(!err.contains("runs again"), "{err}");
    }

    #[test]
    fn retry_values_are_fresh() {
        let now: k8s_openapi::jiff::Timestamp = "2025-01-01T00:00:00.5Z".parse().expect("time");
        let v = fresh_retry_value(now, &[None, None]);
        assert_eq!(v, "2025-01-01T00:00:00.5Z");
        let v2 = fresh_retry_value(now, &[Some(&v), None]);
        assert_ne!(v2, v);
        let v3 = fresh_retry_value(now, &[Some(&v), Some(&v2)]);
        assert!(v3 != v && v3 != v2);
    }
}
