//! The real `phasegate apply` binary as a child process: spawn it with `PHASEGATE_*` settings,
//! watch its stderr while it runs, send it signals, and collect its output and report.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phasegate::executor::Report;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

pub const BIN: &str = env!("CARGO_BIN_EXE_phasegate");

/// The settings of a contract run of migration shop/m (uid-1) needing `app_version`.
pub fn contract_envs<'a>(
    url: &'a str,
    sql: &'a str,
    app_version: &'a str,
    termination_log: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PHASEGATE_DATABASE_URL", url),
        ("PHASEGATE_PHASE", "contract"),
        ("PHASEGATE_SQL", sql),
        ("PHASEGATE_MIGRATION_NAMESPACE", "shop"),
        ("PHASEGATE_MIGRATION_NAME", "m"),
        ("PHASEGATE_MIGRATION_UID", "uid-1"),
        ("PHASEGATE_APP_VERSION", app_version),
        ("PHASEGATE_TERMINATION_LOG", termination_log),
    ]
}

pub struct Running {
    child: tokio::process::Child,
    pub pid: u32,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_task: tokio::task::JoinHandle<()>,
    stdout_task: tokio::task::JoinHandle<String>,
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<Report>,
}

impl Finished {
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn report(&self) -> &Report {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no report in: {}", self.output()))
    }

    /// The report as raw JSON (the last JSON line on stdout).
    pub fn report_json(&self) -> serde_json::Value {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
            .unwrap_or_else(|| panic!("no JSON report in: {}", self.output()))
    }

    /// The JSON lines on stderr that announce a wait (`"waiting": <kind>`).
    pub fn waits(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
            .filter(|v| v.get("waiting").is_some())
            .collect()
    }
}

/// Starts `phasegate apply` with a clean environment plus `envs`.
pub fn spawn(envs: &[(&str, &str)]) -> Running {
    let mut child = tokio::process::Command::new(BIN)
        .arg("apply")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn phasegate");
    let pid = child.id().expect("pid");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = stderr.clone();
    let stderr_task = tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            sink.lock().expect("stderr lines").push(line);
        }
    });
    let mut out = child.stdout.take().expect("stdout");
    let stdout_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s).await;
        s
    });
    Running {
        child,
        pid,
        stderr,
        stderr_task,
        stdout_task,
    }
}

impl Running {
    /// Waits until a stderr line satisfies `pred`; false after `timeout`.
    pub async fn wait_for_stderr(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self
                .stderr
                .lock()
                .expect("stderr lines")
                .iter()
                .any(|l| pred(l))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Wait (up to 20 s) until a session waits for a lock on `table`: the executor has
    /// queued for it.
    pub async fn wait_queued(&self, db: &tokio_postgres::Client, table: &str) {
        let queued = format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND NOT granted"
        );
        let until = Instant::now() + Duration::from_secs(20);
        while db
            .query_one(queued.as_str(), &[])
            .await
            .expect("locks")
            .get::<_, i64>(0)
            == 0
        {
            assert!(
                Instant::now() < until,
                "never queued: {}",
                self.stderr_so_far()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    /// Sends a signal by name (`TERM`, `INT`) with the `kill` utility.
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} {}", self.pid);
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the exit (at most `timeout`, then SIGKILL) and collects the output.
    pub async fn finish(mut self, timeout: Duration) -> (Finished, Duration) {
        let start = Instant::now();
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child.wait().await.expect("wait after kill")
            }
        };
        let elapsed = start.elapsed();
        let stdout = self.stdout_task.await.unwrap_or_default();
        let _ = self.stderr_task.await;
        let stderr = self.stderr.lock().expect("stderr lines").join("\n");
        let report = Report::parse(&stdout);
        (
            Finished {
                code: status.code(),
                stdout,
                stderr,
                report,
            },
            elapsed,
        )
    }
}

/// Runs to completion (at most 60 s).
pub async fn run(envs: &[(&str, &str)]) -> Finished {
    spawn(envs).finish(Duration::from_secs(60)).await.0
}
