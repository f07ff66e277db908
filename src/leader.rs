//! Leader election on a `coordination.k8s.io` Lease, with `kube-lease-manager`.
//!
//! Every replica takes part; only the holder of the Lease runs the controller. A standby
//! waits, and takes the Lease once the holder stops renewing it (crash, SIGKILL, partition)
//! and it expires, or once the holder releases it. On SIGTERM the leader drains the
//! controller and then releases the Lease. A leader that loses the Lease stops at once with
//! an error (the kubelet restarts it as a standby), as client-go's leader election does.
//!
//! The Lease is per watched scope: `phasegate` when watching every namespace,
//! `phasegate-<namespace>` with `--namespace`, so operators of different scopes never contend.
//!
//! Two leaders at once are possible only for the span of clock skew and a partition: the
//! lease manager renews `grace` seconds before expiry. Phasegate tolerates it: Job names are
//! deterministic (a second create is a 409 and is adopted) and the executor's advisory lock and
//! ledger apply a phase at most once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use crate::metrics::Metrics;
use crate::server::{Health, Role};

/// Resolves once the process is asked to stop (SIGTERM or SIGINT); cheap to clone.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// A [`Shutdown`] that resolves on SIGTERM or SIGINT. The handlers are installed now (call it
/// inside the runtime), so a signal that arrives before anything polls the future still counts.
pub fn shutdown_on_signal() -> Shutdown {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers =
            signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut term, mut int)) => tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install signal handlers; only Ctrl-C stops the operator");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        .boxed()
        .shared()
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
        .boxed()
        .shared()
    }
}

/// Where and how to elect.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity in `holderIdentity`; unique per replica.
    pub identity: String,
    /// Seconds a Lease stays valid after its last renewal: the longest failover after a crash.
    pub duration_secs: u64,
    /// The holder renews this many seconds before expiry (must be < `duration_secs`).
    pub grace_secs: u64,
}

impl LeaseConfig {
    /// `phasegate` for every namespace, `phasegate-<namespace>` for one.
    pub fn default_name(watched: Option<&str>) -> String {
        match watched {
            Some(ns) => format!("phasegate-{ns}"),
            None => "phasegate".to_string(),
        }
    }

    /// `$POD_NAME` in a pod (a restarted container takes its Lease back at once), otherwise
    /// `<hostname>-<pid>`, so two local processes never share an identity.
    pub fn default_identity() -> String {
        if let Some(pod) = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()) {
            return pod;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "phasegate".to_string());
        format!("{host}-{}", std::process::id())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.duration_secs > 0 && self.grace_secs > 0,
            "--lease-duration and --lease-grace must be positive"
        );
        anyhow::ensure!(
            self.grace_secs < self.duration_secs,
            "--lease-grace ({}s) must be less than --lease-duration ({}s)",
            self.grace_secs,
            self.duration_secs
        );
        Ok(())
    }
}

/// Take part in the election; run `lead` while this replica holds the Lease.
///
/// Returns `Ok` after a shutdown (the controller drained, the Lease released), an error if
/// the Lease was lost or the election could not run. `lead` must stop by itself when `shutdown`
/// resolves (e.g. `Controller::graceful_shutdown_on`).
pub async fn run_elected<F, Fut>(
    client: Client,
    cfg: LeaseConfig,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    lead: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    cfg.validate()?;
    let manager = LeaseManagerBuilder::new(client, &cfg.name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_field_manager(format!("phasegate-lease-{}", cfg.identity))
        .with_duration(cfg.duration_secs)
        .with_grace(cfg.grace_secs)
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot use Lease {}/{}: {e}", cfg.namespace, cfg.name))?;
    let (mut leading, task) = manager.watch().await;
    health.set_role(Role::Standby);
    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting for the leader Lease");

    // Standby until we hold the Lease, or until asked to stop.
    let became_leader = {
        let wait = async {
            loop {
                if *leading.borrow_and_update() {
                    return Ok(());
                }
                if leading.changed().await.is_err() {
                    return Err(anyhow::anyhow!("the lease manager stopped"));
                }
            }
        };
        tokio::select! {
            r = wait => Some(r),
            _ = shutdown.clone() => None,
            _ = health.keep_alive() => unreachable!("keep_alive never returns"),
        }
    };
    match became_leader {
        None => {
            health.set_role(Role::Stopping);
            release(leading, task, &cfg).await;
            return Ok(());
        }
        Some(Err(e)) => {
            health.fail(e.to_string());
            return Err(finished_with(task, e).await);
        }
        Some(Ok(())) => {}
    }

    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "acquired the leader Lease; starting the controller");
    health.set_role(Role::Leader);
    metrics.leader.set(1);
    let lost = async {
        // Ends when the Lease is lost or the lease manager stops.
        while leading.changed().await.is_ok() {
            if !*leading.borrow_and_update() {
                break;
            }
        }
    };
    let outcome = tokio::select! {
        r = lead() => Ok(r),
        _ = lost => Err(()),
    };
    metrics.leader.set(0);
    metrics.set_store(None);
    match outcome {
        Ok(result) => {
            health.set_role(Role::Stopping);
            release(leading, task, &cfg).await;
            result
        }
        Err(()) => {
            let msg = format!(
                "lost the leader Lease {}/{}; stopping so that only one replica reconciles",
                cfg.namespace, cfg.name
            );
            tracing::error!("{msg}");
            health.fail(msg.clone());
            Err(anyhow::anyhow!(msg))
        }
    }
}

/// The lease manager's background task.
type ManagerTask =
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// Close the channel: the lease manager releases the Lease if we hold it, and stops.
async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    task: ManagerTask,
    cfg: &LeaseConfig,
) {
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => {
            tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, "released the leader Lease")
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, lease = %cfg.name, "could not release the leader Lease; it expires by itself")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "the lease manager task failed"),
        Err(_) => {
            tracing::warn!(lease = %cfg.name, "releasing the leader Lease timed out; it expires by itself")
        }
    }
}

async fn finished_with(task: ManagerTask, fallback: anyhow::Error) -> anyhow::Error {
    match tokio::time::timeout(Duration::from_secs(1), task).await {
        Ok(Ok(Err(e))) => anyhow::anyhow!("leader election failed: {e}"),
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_follow_the_watched_scope() {
        assert_eq!(LeaseConfig::default_name(None), "phasegate");
        assert_eq!(LeaseConfig::default_name(Some("shop")), "phasegate-shop");
    }

    #[test]
    fn grace_must_be_shorter_than_duration() {
        let cfg = |d, g| LeaseConfig {
            name: "n".into(),
            namespace: "ns".into(),
            identity: "i".into(),
            duration_secs: d,
            grace_secs: g,
        };
        assert!(cfg(15, 5).validate().is_ok());
        assert!(cfg(5, 5).validate().is_err());
        assert!(cfg(5, 0).validate().is_err());
    }
}
