//! The end-to-end harness: one namespace, one PostgreSQL server, one operator and one kwok
//! runner per test, against the cluster named by `PHASEGATE_E2E_KUBECONFIG` only.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt, ResourceExt};
use phasegate::api::{DatabaseMigration, Phase};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::postgres::TestPostgres;

/// Everything one test owns.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub pg: TestPostgres,
    kubeconfig: PathBuf,
    /// The operator's: a token of the chart's ServiceAccount, bound to the chart's rules.
    operator_kubeconfig: PathBuf,
    operator: Option<Child>,
    runner: Child,
    pub logs: PathBuf,
    operator_starts: u32,
}

/// A client for the suite's cluster.
pub async fn client() -> Client {
    client_for(&kubeconfig_path()).await
}

fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("PHASEGATE_E2E_KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "PHASEGATE_E2E_KUBECONFIG is not set. The end-to-end suite only touches a cluster you name: \
             run `make e2e` (local kwok cluster) or set PHASEGATE_E2E_KUBECONFIG=/path/to/kubeconfig"
        ),
    }
}

async fn client_for(path: &PathBuf) -> Client {
    let kc =
        Kubeconfig::read_from(path).expect("PHASEGATE_E2E_KUBECONFIG is a readable kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(cfg).expect("client")
}

impl Env {
    /// A fresh namespace with a database Secret, an operator and a runner scoped to it.
    pub async fn new(test: &str) -> Env {
        let kubeconfig = kubeconfig_path();
        let client = client_for(&kubeconfig).await;
        install_crd(&client).await;

        let ns = format!("e2e-{test}-{:04x}", rand::random::<u16>()).replace('_', "-");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
            )
            .await
            .expect("create namespace");
        // Pods need the namespace's default ServiceAccount, made by the controller-manager.
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &ns);
        wait_until(
            Duration::from_secs(30),
            "default ServiceAccount",
            || async { sas.get_opt("default").await.ok().flatten().is_some() },
        )
        .await;

        // The operator runs as users run it: under the chart's ServiceAccount and RBAC.
        let operator_kubeconfig = operator_identity(&client, &kubeconfig, &ns).await;

        let pg = tokio::task::spawn_blocking(TestPostgres::start)
            .await
            .expect("start PostgreSQL");
        create_secret(&client, &ns, "shop-db", &pg.url()).await;

        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        // Benchmarks run the executors users run, a release build.
        let executor = std::env::var("PHASEGATE_E2E_EXECUTOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_phasegate").to_string());
        let runner = spawn(
            &kubeconfig,
            env!("CARGO_BIN_EXE_phasegate-kwok-runner"),
            &["--namespace", &ns, "--phasegate-bin", &executor],
            &logs.join(format!("{ns}-runner.log")),
        );
        let mut env = Env {
            client,
            ns,
            pg,
            kubeconfig,
            operator_kubeconfig,
            operator: None,
            runner,
            logs,
            operator_starts: 0,
        };
        env.start_operator();
        eprintln!(
            "[{test}] namespace {} (logs in {})",
            env.ns,
            env.logs.display()
        );
        env
    }

    pub fn start_operator(&mut self) {
        self.operator_starts += 1;
        let log = self
            .logs
            .join(format!("{}-operator-{}.log", self.ns, self.operator_starts));
        // `make bench-order` runs a baseline operator against the same tests.
        let bin = std::env::var("PHASEGATE_E2E_OPERATOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_phasegate").to_string());
        self.operator = Some(spawn(
            &self.operator_kubeconfig,
            &bin,
            // Port 0: tests run in parallel, each with its own operator (see ha.rs for probes).
            // Executors (run by the kwok runner on this host) reach its grant port directly.
            &[
                "controller",
                "--namespace",
                &self.ns,
                "--executor-image",
                "phasegate:e2e",
                "--metrics-addr",
                "127.0.0.1:0",
                "--grant-addr",
                "127.0.0.1:0",
            ],
            &log,
        ));
    }

    /// Send `signal` (`STOP`, `CONT`, …) to the operator: a stopped operator neither plans
    /// nor answers grant requests.
    pub fn signal_operator(&self, signal: &str) {
        send_signal(self.operator.as_ref().and_then(Child::id), signal);
    }

    /// Send `signal` to this test's stand-in for the kubelet (the kwok runner): stopped, it
    /// delivers no SIGTERM to a deleted pod's executor and reports nothing.
    pub fn signal_runner(&self, signal: &str) {
        send_signal(self.runner.id(), signal);
    }

    /// The operator process's resident set now and at its peak, in KiB (`VmRSS`, `VmHWM`).
    pub fn operator_rss_kib(&self) -> Option<(u64, u64)> {
        let pid = self.operator.as_ref().and_then(Child::id)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// SIGKILL the operator, as a node failure would.
    pub async fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            child.kill().await.expect("kill operator");
        }
    }

    /// A Secret `name` whose key `url` holds `url`, as a database Secret.
    pub async fn create_secret(&self, name: &str, url: &str) {
        create_secret(&self.client, &self.ns, name, url).await;
    }

    pub fn migrations(&self) -> Api<DatabaseMigration> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Create a Deployment whose pod template carries `app.kubernetes.io/version`.
    pub async fn create_deployment(&self, name: &str, replicas: i32, version: &str) {
        let d = json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "shop"}},
            "spec": {
                "replicas": replicas,
                "progressDeadlineSeconds": 10,
                "selector": {"matchLabels": {"app": name}},
                "strategy": {"rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": name, "app.kubernetes.io/version": version}},
                    "spec": {"containers": [{"name": "api", "image": format!("shop/api:{version}")}]}
                }
            }
        });
        self.deployments()
            .create(
                &PostParams::default(),
                &serde_json::from_value(d).expect("deployment"),
            )
            .await
            .expect("create deployment");
        self.wait_rolled_out(name).await;
    }

    /// Move a Deployment's pod template to `version`, adding (or, with `null`, removing) pod labels.
    pub async fn set_version(&self, name: &str, version: &str, extra_labels: serde_json::Value) {
        let mut labels = json!({"app": name, "app.kubernetes.io/version": version});
        if let (Some(l), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
            l.extend(extra.clone());
        }
        let patch = json!({"spec": {"template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "api", "image": format!("shop/api:{version}")}]}
        }}});
        // A JSON merge patch: a `null` in `extra_labels` removes that label.
        self.deployments()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch deployment");
    }

    pub async fn wait_rolled_out(&self, name: &str) {
        let api = self.deployments();
        wait_until(
            Duration::from_secs(60),
            &format!("Deployment {name} rolled out"),
            || async {
                let Ok(d) = api.get(name).await else {
                    return false;
                };
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let s = d.status.unwrap_or_default();
                s.observed_generation == d.metadata.generation
                    && s.updated_replicas.unwrap_or(0) == want
                    && s.available_replicas.unwrap_or(0) == want
                    && s.replicas.unwrap_or(0) == want
            },
        )
        .await;
    }

    /// Create a migration from a JSON spec.
    /// Sent untyped, so that manifests the Rust types would refuse reach the API server.
    pub async fn create_migration(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<DynamicObject, kube::Error> {
        let ar = ApiResource::erase::<DatabaseMigration>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        let obj = json!({"apiVersion": "phasegate.dev/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": name}, "spec": spec});
        api.create(
            &PostParams::default(),
            &serde_json::from_value(obj).expect("migration"),
        )
        .await
    }

    /// Wait until the migration satisfies `pred`; panics with its last status otherwise.
    pub async fn wait_migration(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&DatabaseMigration) -> bool,
    ) -> DatabaseMigration {
        let api = self.migrations();
        let start = Instant::now();
        loop {
            if let Ok(m) = api.get(name).await {
                if pred(&m) {
                    return m;
                }
                if start.elapsed() > timeout {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; status: {}",
                        serde_json::to_string_pretty(&m.status).unwrap_or_default()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Set an annotation on a migration, as a commit to git would.
    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.migrations()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    pub async fn wait_phase(
        &self,
        name: &str,
        phase: Phase,
        timeout: Duration,
    ) -> DatabaseMigration {
        self.wait_migration(name, timeout, &format!("phase {phase}"), |m| {
            m.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    /// Reasons of the Events Phasegate published about a migration, oldest first.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let mut list = events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items;
        list.retain(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reporting_controller.as_deref() == Some("phasegate")
        });
        list.sort_by(|a, b| a.event_time.cmp(&b.event_time));
        list.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Waits until the migration has a phasegate Event with this reason (Events are
    /// published right after the status write, so a test that just saw the status may be
    /// early).
    pub async fn wait_event(&self, name: &str, reason: &str) {
        wait_until(
            std::time::Duration::from_secs(30),
            &format!("a {reason} Event on {name}"),
            || async { self.event_reasons(name).await.iter().any(|r| r == reason) },
        )
        .await;
    }

    /// Names of the Jobs of a phase.
    pub async fn job_names(&self, phase: &str) -> Vec<String> {
        let lp = ListParams::default().labels(&format!("phasegate.dev/phase={phase}"));
        self.jobs()
            .list(&lp)
            .await
            .expect("list jobs")
            .items
            .iter()
            .map(|j| j.name_any())
            .collect()
    }

    /// Whether `table.column` exists in the test database.
    pub async fn column_exists(&self, table: &str, column: &str) -> bool {
        let client = self.pg.client().await;
        let row = client
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
                &[&table, &column],
            )
            .await
            .expect("query information_schema");
        row.get::<_, i64>(0) == 1
    }

    /// Delete the namespace (only on success: a failed test leaves it for inspection).
    pub async fn cleanup(mut self) {
        self.kill_operator().await;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.ns, &DeleteParams::background())
            .await;
    }
}

fn send_signal(pid: Option<u32>, signal: &str) {
    let pid = pid.expect("the process runs");
    let ok = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

pub fn spawn(kubeconfig: &PathBuf, bin: &str, args: &[&str], log: &PathBuf) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,phasegate=debug")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// The operator's rules as the chart grants them (the `phasegate.operatorRules` and
/// `phasegate.leaderElectionRules` blocks of charts/phasegate/templates/rbac.yaml, one flow
/// mapping per line), as one namespaced Role: the e2e operator watches one namespace, as the
/// chart's `watchNamespace` form does.
fn chart_operator_rules() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/phasegate/templates/rbac.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the chart's rbac.yaml");
    let mut rules = Vec::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("{{- define \"phasegate.operatorRules\"")
            || line.starts_with("{{- define \"phasegate.leaderElectionRules\"")
        {
            inside = true;
        } else if line.starts_with("{{- end") {
            inside = false;
        } else if inside && line.starts_with("- {") {
            let rule: serde_json::Value =
                serde_yaml::from_str(&line[2..]).expect("a one-line rule in rbac.yaml");
            rules.push(rule);
        }
    }
    assert!(
        rules.len() > 5,
        "found the chart's operator rules: {rules:?}"
    );
    rules
}

/// A ServiceAccount `phasegate` in `ns` bound to the chart's operator rules, and a kubeconfig
/// that authenticates with a token of it (TokenRequest) against the suite's cluster.
async fn operator_identity(client: &Client, admin: &PathBuf, ns: &str) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "phasegate"}})).expect("sa"),
    )
    .await
    .expect("create the operator's ServiceAccount");
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": "phasegate"}, "rules": chart_operator_rules()}),
            )
            .expect("role"),
        )
        .await
        .expect("create the operator's Role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "phasegate"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "phasegate"},
                "subjects": [{"kind": "ServiceAccount", "name": "phasegate", "namespace": ns}]
            }))
            .expect("binding"),
        )
        .await
        .expect("bind the operator's Role");
    let req: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 6 * 3600}
    }))
    .expect("token request");
    let token = sas
        .create_token_request("phasegate", &pp, &req)
        .await
        .expect("a token of the operator's ServiceAccount")
        .status
        .expect("token status")
        .token;
    let mut kc = Kubeconfig::read_from(admin).expect("the suite's kubeconfig");
    let context = kc.current_context.clone().unwrap_or_default();
    let cluster = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("the current context's cluster");
    let kc_text = serde_yaml::to_string(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [serde_json::to_value(
            kc.clusters.drain(..).find(|c| c.name == cluster).expect("cluster")
        ).expect("cluster json")],
        "users": [{"name": "phasegate", "user": {"token": token}}],
        "contexts": [{"name": "phasegate", "context": {"cluster": cluster, "user": "phasegate", "namespace": ns}}],
        "current-context": "phasegate",
    }))
    .expect("kubeconfig yaml");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-{ns}"));
    std::fs::write(&path, kc_text).expect("write the operator's kubeconfig");
    path
}

/// This tree's CRD, or the one `PHASEGATE_E2E_CRD` names (a benchmark's baseline operator runs
/// with its own: this tree's may prune status fields it writes).
async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = match std::env::var("PHASEGATE_E2E_CRD") {
        Ok(path) => serde_yaml::from_str::<CustomResourceDefinition>(
            &std::fs::read_to_string(&path).expect("read PHASEGATE_E2E_CRD"),
        )
        .expect("PHASEGATE_E2E_CRD is a CRD"),
        Err(_) => DatabaseMigration::crd(),
    };
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("phasegate-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    wait_crd_established(&crds, &crd.name_any()).await;
}

/// Waits until the API server serves a CRD.
pub async fn wait_crd_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("CRD {name} established"),
        || async {
            crds.get(name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await;
}

async fn create_secret(client: &Client, ns: &str, name: &str, url: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = json!({"metadata": {"name": name}, "stringData": {"url": url}});
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(secret).expect("secret"),
        )
        .await
        .expect("create secret");
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Condition `type_` of a migration as (status, reason, message).
pub fn condition(m: &DatabaseMigration, type_: &str) -> Option<(String, String, String)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

// Helpers for the plugin and examples tests (tests/e2e/plugin.rs, tests/e2e/examples.rs).
impl Env {
    /// The kubeconfig the suite runs against.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Run the real `phasegate` binary with `KUBECONFIG` set to the suite's kubeconfig (or to
    /// `kubeconfig`), stdout piped (so never coloured): (success, stdout, stderr).
    pub async fn phasegate_cli(
        &self,
        args: &[&str],
        kubeconfig: Option<&std::path::Path>,
    ) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
            .args(args)
            .env("KUBECONFIG", kubeconfig.unwrap_or(&self.kubeconfig))
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .await
            .expect("run phasegate");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("$ phasegate {}\n{stdout}{stderr}", args.join(" "));
        (out.status.success(), stdout, stderr)
    }
}

// Helpers for the HA and metrics tests (tests/e2e/ha.rs).
impl Env {
    /// Start one more operator for this namespace with `extra` arguments (leader election
    /// flags, `--metrics-addr`); the caller owns it (killed on drop). Logs: `<ns>-<label>.log`.
    pub fn spawn_operator(&self, label: &str, extra: &[&str]) -> Child {
        let log = self.logs.join(format!("{}-{label}.log", self.ns));
        let mut args = vec![
            "controller",
            "--namespace",
            self.ns.as_str(),
            "--executor-image",
            "phasegate:e2e",
        ];
        if !extra.contains(&"--grant-addr") {
            args.extend_from_slice(&["--grant-addr", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        spawn(
            &self.operator_kubeconfig,
            env!("CARGO_BIN_EXE_phasegate"),
            &args,
            &log,
        )
    }
}

impl Env {
    /// Replace this namespace's operator by one whose `/metrics` the test reads on the
    /// returned port; the caller keeps the child (killed on drop).
    pub async fn operator_with_metrics(&mut self) -> (Child, u16) {
        self.kill_operator().await;
        let port = free_port();
        let child = self.spawn_operator(
            "op-metrics",
            &["--metrics-addr", &format!("127.0.0.1:{port}")],
        );
        (child, port)
    }
}

/// Wait until the value of `series` (name and labels exactly as exposed on the operator's
/// `/metrics` at `port`) satisfies `ok`; returns it.
pub async fn wait_metric(port: u16, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok((200, body)) = http_get(port, "/metrics").await {
            let v = body.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            });
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{series} never as expected; last scrape:\n{last}");
}

/// A TCP port free on 127.0.0.1 right now (for an operator's `--metrics-addr`).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// `GET http://127.0.0.1:<port><path>` as (status code, body); an error while nothing listens.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let code = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
    .await
    .expect("http_get task")
}

/// The pid of this namespace's executor process of `phase` and `attempt` (the kwok runner runs
/// it on this machine), found by its environment: other tests may run executors at the same time.
pub fn executor_pid(ns: &str, phase: &str, attempt: u32) -> Option<u32> {
    let want = [
        format!("PHASEGATE_MIGRATION_NAMESPACE={ns}"),
        format!("PHASEGATE_ATTEMPT={attempt}"),
        format!("PHASEGATE_PHASE={phase}"),
    ];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|d| {
        let pid: u32 = d.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(d.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        want.iter()
            .all(|w| vars.contains(&w.as_bytes()))
            .then_some(pid)
    })
}
