//! Test and demo harness for kwok clusters, not part of the product: kwok simulates pods
//! without running them, so this runner does what a kubelet would for Phasegate's executor
//! pods. It watches pods labelled `phasegate.dev/executor`, resolves their environment
//! through the API (Secrets included), runs the real `phasegate apply` process on this
//! machine, and writes the outcome (phase, exit code, termination message) into the pod's
//! status, so the real Job controller sees a real success or failure.
//!
//! The container's output is also written, in the CRI log format, to a file that a kwok `Logs`
//! object names for the pod, so `kubectl logs` (and the operator, which reads an executor's
//! wait lines) get it from kwok-controller as they would from a kubelet. The cluster must have
//! the Logs CRD (`kwokctl create cluster --enable-crds Logs`, as hack/local-cluster.sh does).
//!
//! Containers whose image is not Phasegate's run their `command`/`args` locally when the
//! program exists here (e.g. `psql`), which is how the user-Job examples are exercised; when
//! it does not (e.g. `flyway`), the pod fails to start, as with an image lacking it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Runs Phasegate executor pods of a kwok cluster on this machine (tests and demo only)"
)]
struct Args {
    /// Only handle pods in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The `phasegate` binary to run for Phasegate's executor image.
    #[arg(long, env = "PHASEGATE_BIN")]
    phasegate_bin: PathBuf,
    /// Where container logs are written (one file per pod and container).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("phasegate-kwok-runner-logs"))]
    logs_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = Args::parse();
    let client = Client::try_default()
        .await
        .context("building a Kubernetes client")?;
    let pods: Api<Pod> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let cfg = watcher::Config::default().labels(phasegate::api::LABEL_EXECUTOR);
    let mut stream = watcher(pods, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    tracing::info!(namespace = ?args.namespace, "kwok runner watching executor pods");
    while let Some(pod) = stream.try_next().await? {
        let uid = pod.uid().unwrap_or_default();
        let scheduled = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        let pending = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Pending");
        if !scheduled || !pending || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let fresh = started.lock().map(|mut s| s.insert(uid)).unwrap_or(false);
        if !fresh {
            continue;
        }
        let (client, args) = (client.clone(), args.clone());
        tokio::spawn(async move {
            let name = pod.name_any();
            if let Err(e) = run_pod(client, &args, pod).await {
                tracing::error!(pod = %name, error = %format!("{e:#}"), "could not run executor pod");
            }
        });
    }
    Ok(())
}

async fn run_pod(client: Client, args: &Args, pod: Pod) -> anyhow::Result<()> {
    let ns = pod
        .namespace()
        .ok_or_else(|| anyhow!("pod without namespace"))?;
    let name = pod.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .cloned()
        .ok_or_else(|| anyhow!("pod {name} has no container"))?;
    // As the kubelet does, a missing Secret or key keeps the container waiting with
    // CreateContainerConfigError, retried until it appears or the pod goes away.
    let mut reported = None;
    let env = loop {
        match resolve_env(&client, &ns, &container).await {
            Ok(env) => break env,
            Err(e) => {
                let msg = format!("{e:#}");
                if reported.as_ref() != Some(&msg) {
                    tracing::warn!(pod = %name, error = %msg, "container config error; retrying");
                    let waiting = serde_json::json!({"waiting": {"reason": "CreateContainerConfigError", "message": msg}});
                    set_status(&pods, &name, &container, waiting, "Pending").await?;
                    reported = Some(msg);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                match pods.get_opt(&name).await? {
                    Some(p) if p.metadata.deletion_timestamp.is_none() => continue,
                    _ => return Ok(()),
                }
            }
        }
    };
    let started_at = Timestamp::now();
    set_status(
        &pods,
        &name,
        &container,
        serde_json::json!({"running": {"startedAt": started_at.to_string()}}),
        "Running",
    )
    .await?;
    // As a kubelet does, the pod object outlives a deletion until its container has ended:
    // kwok's own pod-delete stage would remove it at once, so a finalizer holds it.
    hold(&pods, &name, true).await?;
    let result = run_started(
        client, args, &pods, &name, &pod, &container, env, started_at,
    )
    .await;
    hold(&pods, &name, false).await?;
    result
}

/// Add (or remove) the runner's finalizer on a pod, beside the others (the Job controller
/// tracks its pods with one of its own): a strategic merge patch merges the list.
async fn hold(pods: &Api<Pod>, name: &str, on: bool) -> anyhow::Result<()> {
    let patch = if on {
        serde_json::json!({"metadata": {"finalizers": [RUNNER_FINALIZER]}})
    } else {
        serde_json::json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [RUNNER_FINALIZER]}})
    };
    match pods
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("finalizer of pod {name}")),
    }
}

/// Keeps a started executor pod's object until its process has ended.
const RUNNER_FINALIZER: &str = "phasegate.dev/kwok-runner";

#[allow(clippy::too_many_arguments)]
async fn run_started(
    client: Client,
    args: &Args,
    pods: &Api<Pod>,
    name: &str,
    pod: &Pod,
    container: &k8s_openapi::api::core::v1::Container,
    env: std::collections::BTreeMap<String, String>,
    started_at: Timestamp,
) -> anyhow::Result<()> {
    let (pods, name, container) = (pods.clone(), name.to_string(), container.clone());
    let ns = pod.namespace().unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let term_log = dir.path().join("termination-log");
    let log_file = serve_logs(&client, args, &ns, &name, pod, &container.name).await;
    let (program, argv) = command_of(&container, args)?;
    tracing::info!(pod = %name, %program, "running executor");
    let outcome = {
        {
            let child = tokio::process::Command::new(&program)
                .args(&argv)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env)
                .env("PHASEGATE_TERMINATION_LOG", &term_log)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn();
            let child = match child {
                Ok(child) => child,
                // As the kubelet does for an image without the executable (here: a program
                // this machine lacks, e.g. `flyway`): the container fails to start.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(pod = %name, %program, "program not found on this machine; failing the pod");
                    let msg = format!("StartError: exec: {program:?}: executable file not found in $PATH (kwok runner: {program} is not installed on this machine)");
                    return finish(&pods, &name, &container, started_at, 128, msg).await;
                }
                Err(e) => return Err(e).with_context(|| format!("starting {program}")),
            };
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            let out = run_until_deleted(child, &pods, &name, grace, log_file).await?;
            // As container runtimes report it: a process ended by signal N exits 128 + N
            // (137 for SIGKILL).
            let code = out
                .status
                .code()
                .or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    out.status.signal().map(|s| 128 + s)
                })
                .unwrap_or(128);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            tracing::info!(pod = %name, code, "executor finished");
            let message = std::fs::read_to_string(&term_log)
                .ok()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| {
                    // FallbackToLogsOnError: the tail of the logs.
                    let logs = format!("{stdout}{stderr}");
                    let tail: Vec<&str> = logs.lines().rev().take(20).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                });
            (code, message)
        }
    };
    let (code, message) = outcome;
    finish(&pods, &name, &container, started_at, code, message).await
}

/// Wait for the container's process; as the kubelet does, send SIGTERM once the pod is being
/// deleted (a stopped Job), and SIGKILL after the grace period.
async fn run_until_deleted(
    mut child: tokio::process::Child,
    pods: &Api<Pod>,
    name: &str,
    grace_secs: i64,
    log_file: Option<tokio::fs::File>,
) -> anyhow::Result<std::process::Output> {
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let log = Arc::new(tokio::sync::Mutex::new(log_file));
    let (out_log, err_log) = (log.clone(), log);
    let out_task = tokio::spawn(async move { capture(&mut stdout, "stdout", out_log).await });
    let err_task = tokio::spawn(async move { capture(&mut stderr, "stderr", err_log).await });
    let mut terminating_since: Option<std::time::Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if let Some(since) = terminating_since {
                    if since.elapsed().as_secs() >= u64::try_from(grace_secs).unwrap_or(0) {
                        let _ = child.start_kill();
                    }
                    continue;
                }
                let gone = match pods.get_opt(name).await {
                    Ok(Some(p)) => p.metadata.deletion_timestamp.is_some(),
                    Ok(None) => true,
                    Err(_) => false,
                };
                if gone {
                    if let Some(pid) = child.id() {
                        tracing::info!(pod = %name, pid, "pod deleted: sending SIGTERM");
                        let _ = tokio::process::Command::new("kill")
                            .args(["-TERM", &pid.to_string()])
                            .status()
                            .await;
                    }
                    terminating_since = Some(std::time::Instant::now());
                }
            }
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out_task.await.unwrap_or_default(),
        stderr: err_task.await.unwrap_or_default(),
    })
}

/// Reads a stream to its end, as the process writes it; each line is also appended to the log
/// file in the CRI format (`<RFC 3339 time> <stream> F <line>`), as container runtimes do.
async fn capture(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    stream: &str,
    log: Arc<tokio::sync::Mutex<Option<tokio::fs::File>>>,
) -> Vec<u8> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(from);
    let mut all = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        all.extend_from_slice(&line);
        let mut guard = log.lock().await;
        if let Some(file) = guard.as_mut() {
            let text = String::from_utf8_lossy(&line);
            let entry = format!(
                "{} {stream} F {}\n",
                Timestamp::now(),
                text.trim_end_matches('\n')
            );
            if file.write_all(entry.as_bytes()).await.is_err() {
                *guard = None;
            }
        }
    }
    all
}

/// Creates the pod's log file and a kwok `Logs` object pointing kwok-controller at it. Without
/// the Logs CRD (or on any error) the pod still runs; only `kubectl logs` has nothing.
async fn serve_logs(
    client: &Client,
    args: &Args,
    ns: &str,
    name: &str,
    pod: &Pod,
    container: &str,
) -> Option<tokio::fs::File> {
    let uid = pod.uid().unwrap_or_default();
    let path = args
        .logs_dir
        .join(format!("{ns}_{name}_{uid}_{container}.log"));
    let file = async {
        tokio::fs::create_dir_all(&args.logs_dir).await?;
        tokio::fs::File::create(&path).await
    }
    .await;
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(pod = %name, error = %e, path = %path.display(), "cannot write the pod's log");
            return None;
        }
    };
    let gvk = kube::api::GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "logs");
    let logs: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj = serde_json::json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"logs": [{"containers": [container], "logsFile": path, "follow": true}]},
    });
    let ssa = PatchParams::apply("phasegate-kwok-runner").force();
    if let Err(e) = logs.patch(name, &ssa, &Patch::Apply(&obj)).await {
        tracing::warn!(pod = %name, error = %e, "cannot register the pod's log with kwok (is the Logs CRD installed?)");
    }
    Some(file)
}

/// Write the terminated state of the pod's container.
async fn finish(
    pods: &Api<Pod>,
    name: &str,
    container: &Container,
    started_at: Timestamp,
    code: i32,
    message: String,
) -> anyhow::Result<()> {
    let message: String = message.chars().take(4000).collect();
    let terminated = serde_json::json!({"terminated": {
        "exitCode": code,
        // As containerd reports a container that could not be started.
        "reason": match code {
            0 => "Completed",
            _ if message.starts_with("StartError") => "StartError",
            _ => "Error",
        },
        "message": message,
        "startedAt": started_at.to_string(),
        "finishedAt": Timestamp::now().to_string(),
    }});
    set_status(
        pods,
        name,
        container,
        terminated,
        if code == 0 { "Succeeded" } else { "Failed" },
    )
    .await
}

async fn set_status(
    pods: &Api<Pod>,
    name: &str,
    c: &Container,
    state: serde_json::Value,
    phase: &str,
) -> anyhow::Result<()> {
    let patch = serde_json::json!({"status": {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": if phase == "Running" { "True" } else { "False" }, "lastTransitionTime": Timestamp::now().to_string()}],
        "containerStatuses": [{
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": phase == "Running",
            "restartCount": 0,
            "started": phase == "Running",
            "state": state,
        }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("writing status of pod {name}"))?;
    Ok(())
}

/// What to run: Phasegate's image runs the local `phasegate` binary with the container's
/// args; any other image runs its command locally.
fn command_of(c: &Container, args: &Args) -> anyhow::Result<(String, Vec<String>)> {
    let image = c.image.clone().unwrap_or_default();
    let image_name = image.rsplit('/').next().unwrap_or_default();
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    if image_name.starts_with("phasegate:") || image_name == "phasegate" {
        let rest = if c.command.is_some() {
            argv.into_iter().skip(1).collect()
        } else {
            argv
        };
        return Ok((args.phasegate_bin.display().to_string(), rest));
    }
    let mut it = argv.into_iter();
    let program = it.next().ok_or_else(|| {
        anyhow!(
            "container {} of image {image} has no command to run locally",
            c.name
        )
    })?;
    Ok((program, it.collect()))
}

async fn resolve_env(
    client: &Client,
    ns: &str,
    c: &Container,
) -> anyhow::Result<BTreeMap<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut env = BTreeMap::new();
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            v.clone()
        } else if let Some(src) = &var.value_from {
            if let Some(sk) = &src.secret_key_ref {
                let secret = secrets
                    .get(&sk.name)
                    .await
                    .with_context(|| format!("secret {:?} not found", sk.name))?;
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&sk.key))
                    .map(|b| b.0.clone())
                    .or_else(|| {
                        secret
                            .string_data
                            .as_ref()
                            .and_then(|d| d.get(&sk.key))
                            .map(|s| s.as_bytes().to_vec())
                    })
                    .ok_or_else(|| {
                        anyhow!("couldn't find key {} in Secret {}/{}", sk.key, ns, sk.name)
                    })?;
                String::from_utf8(bytes).context("secret value is not UTF-8")?
            } else if let Some(ck) = &src.config_map_key_ref {
                let cm = maps
                    .get(&ck.name)
                    .await
                    .with_context(|| format!("configmap {:?} not found", ck.name))?;
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(&ck.key))
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!("couldn't find key {} in ConfigMap {}", ck.key, ck.name)
                    })?
            } else {
                continue;
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}
