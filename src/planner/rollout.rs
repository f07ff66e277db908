//! Whether one workload has completed its rollout of `appVersion`: a pure judgement over
//! what the controller observed.

use crate::api::{TargetKind, TargetStatus};

use super::version;

/// One workload as observed, with its pods.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadObservation {
    pub kind: TargetKind,
    pub name: String,
    pub generation: i64,
    pub observed_generation: i64,
    /// The version the pod template carries, if any.
    pub template_version: Option<String>,
    /// Desired replicas (`spec.replicas`).
    pub replicas: i32,
    /// `status.replicas`: every non-terminated pod the controller counts.
    pub current_replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    pub paused: bool,
    /// The workload's controller reported it cannot make progress.
    pub progress_deadline_exceeded: bool,
    /// What the workload's own controller still has to finish, beyond replica counts (an
    /// Argo Rollout not fully promoted, or aborted).
    pub unfinished: Option<String>,
    /// Every pod the workload's selector matches, terminating ones included.
    pub pods: Vec<PodObservation>,
}

/// One pod as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObservation {
    pub name: String,
    pub version: Option<String>,
    pub terminating: bool,
}

/// Judge one workload against `rule` (`appVersion` and its order). Complete means: the
/// template carries a version the rule accepts, the controller has observed the latest generation, every
/// desired replica is updated and available with no surplus, and no pod of an older (or
/// unknown) version remains, terminating pods included.
pub fn evaluate(w: &WorkloadObservation, rule: &version::VersionRule) -> TargetStatus {
    let old_pods: Vec<&PodObservation> = w
        .pods
        .iter()
        .filter(|p| !p.version.as_deref().is_some_and(|v| rule.satisfied_by(v)))
        .collect();
    let old_terminating = old_pods.iter().filter(|p| p.terminating).count();

    let waiting = match &w.template_version {
        None => Some(format!(
            "{} {} pod template carries no version",
            w.kind, w.name
        )),
        Some(v) if !rule.satisfied_by(v) => Some(format!(
            "{} {} runs version {v}, needs {}",
            w.kind,
            w.name,
            rule.wanted(v)
        )),
        Some(_) if w.observed_generation < w.generation => Some(format!(
            "{} {}: controller has not observed generation {} yet",
            w.kind, w.name, w.generation
        )),
        Some(_) if w.unfinished.is_some() => Some(format!(
            "{} {}: {}",
            w.kind,
            w.name,
            w.unfinished.as_deref().unwrap_or_default()
        )),
        Some(_)
            if w.updated_replicas < w.replicas
                || w.available_replicas < w.replicas
                || w.current_replicas > w.replicas =>
        {
            let mut m = format!(
                "{} {}: {}/{} replicas updated, {} available, {} total",
                w.kind,
                w.name,
                w.updated_replicas,
                w.replicas,
                w.available_replicas,
                w.current_replicas
            );
            if w.paused {
                m.push_str("; rollout is paused");
            }
            if w.progress_deadline_exceeded {
                m.push_str("; rollout stalled (ProgressDeadlineExceeded)");
            }
            Some(m)
        }
        Some(_) if !old_pods.is_empty() => Some(format!(
            "{} {}: {} pod(s) of an older version remain ({} terminating), e.g. {}",
            w.kind,
            w.name,
            old_pods.len(),
            old_terminating,
            old_pods[0].name
        )),
        Some(_) => None,
    };

    TargetStatus {
        kind: w.kind.to_string(),
        name: w.name.clone(),
        version: w.template_version.clone(),
        complete: waiting.is_none(),
        replicas: w.replicas,
        updated_replicas: w.updated_replicas,
        available_replicas: w.available_replicas,
        old_pods: i32::try_from(old_pods.len()).unwrap_or(i32::MAX),
        message: waiting,
        not_found: false,
    }
}

/// Whether only code the rule accepts can run on this target, availability aside:
/// its template carries such a version and no older (or unversioned) pod remains. A target
/// that could not be observed never qualifies.
pub fn runs_only_new_code(t: &TargetStatus, rule: &version::VersionRule) -> bool {
    t.old_pods == 0 && t.version.as_deref().is_some_and(|v| rule.satisfied_by(v))
}

/// A target that could not be observed (not found, selector matched nothing): never complete.
pub fn missing(kind: TargetKind, name: impl Into<String>, why: impl Into<String>) -> TargetStatus {
    TargetStatus {
        kind: kind.to_string(),
        name: name.into(),
        complete: false,
        message: Some(why.into()),
        not_found: true,
        ..TargetStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, v: &str, terminating: bool) -> PodObservation {
        PodObservation {
            name: name.into(),
            version: Some(v.into()),
            terminating,
        }
    }

    fn done(v: &str) -> WorkloadObservation {
        WorkloadObservation {
            kind: TargetKind::Deployment,
            name: "api".into(),
            generation: 2,
            observed_generation: 2,
            template_version: Some(v.into()),
            replicas: 3,
            current_replicas: 3,
            updated_replicas: 3,
            available_replicas: 3,
            paused: false,
            progress_deadline_exceeded: false,
            unfinished: None,
            pods: vec![pod("a", v, false), pod("b", v, false), pod("c", v, false)],
        }
    }

    #[test]
    fn complete_rollout() {
        let s = evaluate(&done("2.4.0"), &version::VersionRule::semver("2.4.0"));
        assert!(s.complete, "{s:?}");
        assert!(evaluate(&done("2.5.0"), &version::VersionRule::semver("2.4.0")).complete);
    }

    #[test]
    fn older_template_is_not_complete() {
        let s = evaluate(&done("2.3.0"), &version::VersionRule::semver("2.4.0"));
        assert!(!s.complete);
        assert!(s.message.unwrap().contains("runs version 2.3.0"));
    }

    #[test]
    fn missing_version_is_not_complete() {
        let mut w = done("2.4.0");
        w.template_version = None;
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
    }

    #[test]
    fn unobserved_generation_is_not_complete() {
        let mut w = done("2.4.0");
        w.observed_generation = 1;
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
    }

    #[test]
    fn partial_rollout_is_not_complete() {
        let mut w = done("2.4.0");
        w.updated_replicas = 2;
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
        let mut w = done("2.4.0");
        w.available_replicas = 2;
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
        let mut w = done("2.4.0");
        w.current_replicas = 4;
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
    }

    #[test]
    fn terminating_old_pod_blocks() {
        let mut w = done("2.4.0");
        w.pods.push(pod("old", "2.3.0", true));
        let s = evaluate(&w, &version::VersionRule::semver("2.4.0"));
        assert!(!s.complete);
        assert_eq!(s.old_pods, 1);
        assert!(s.message.unwrap().contains("1 terminating"));
    }

    #[test]
    fn unlabelled_pod_blocks() {
        let mut w = done("2.4.0");
        w.pods.push(PodObservation {
            name: "x".into(),
            version: None,
            terminating: false,
        });
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
    }

    #[test]
    fn what_the_workloads_controller_has_not_finished_keeps_it_incomplete() {
        let mut w = done("2.4.0");
        w.unfinished = Some("not fully promoted: stable ReplicaSet 6d4f, current 7c9b".into());
        let s = evaluate(&w, &version::VersionRule::semver("2.4.0"));
        assert!(!s.complete);
        assert!(s.message.unwrap_or_default().contains("not fully promoted"));
    }

    #[test]
    fn zero_replicas_is_complete_once_template_is_new() {
        let mut w = done("2.4.0");
        w.replicas = 0;
        w.current_replicas = 0;
        w.updated_replicas = 0;
        w.available_replicas = 0;
        w.pods.clear();
        assert!(evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
        w.template_version = Some("2.3.0".into());
        assert!(!evaluate(&w, &version::VersionRule::semver("2.4.0")).complete);
    }

    #[test]
    fn stalled_rollout_says_why() {
        let mut w = done("2.4.0");
        w.available_replicas = 1;
        w.progress_deadline_exceeded = true;
        let s = evaluate(&w, &version::VersionRule::semver("2.4.0"));
        assert!(s.message.unwrap().contains("ProgressDeadlineExceeded"));
    }
}
