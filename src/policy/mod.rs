//! The Job template policy: what a migration author's own `job.template` may ask of the
//! cluster.
//!
//! Pure: no I/O. Whoever may create a `DatabaseMigration` must gain no more than running SQL
//! against the database its Secret names. A `job` phase runs the author's pod template as a
//! Job under the operator's ServiceAccount, so without this policy the author could run a
//! privileged, host-namespace pod as any ServiceAccount of the namespace. [`check`] lists every
//! rule a template breaks; [`enforce`] applies the defaults Phasegate imposes on every
//! template it runs.
//!
//! The cluster admin sets the [`JobPolicy`] (the controller's `--job-policy` file, the chart's
//! `jobPolicy` value); a migration author never can. The chart ships the same rules as a
//! ValidatingAdmissionPolicy (`charts/phasegate/templates/admission-policy.yaml`): keep the two
//! in step (tests/chart.rs checks that every rule in [`RULES`] appears there).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, ContainerPort, EnvFromSource, EnvVar, EphemeralContainer,
    PodSecurityContext, PodSpec, PodTemplateSpec, SELinuxOptions, SeccompProfile, SecurityContext,
    WindowsSecurityContextOptions,
};
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// What the cluster admin allows in user-supplied Job templates. `Default` is the safe default.
///
/// Unknown fields are an error, so a misspelt knob never silently keeps the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct JobPolicy {
    /// Police templates at all. Turn off only where every migration author may already run
    /// privileged pods.
    pub enabled: bool,
    /// ServiceAccounts (by name, in the migration's namespace) a template may run as, besides
    /// the namespace's `default`. Empty: only `default`.
    pub allowed_service_accounts: Vec<String>,
    /// Let templates mount a ServiceAccount token (automount or a projected token volume).
    /// Off: Phasegate sets `automountServiceAccountToken: false` and refuses token volumes.
    pub allow_service_account_token: bool,
    /// Capabilities a container may add (`NET_BIND_SERVICE` or `CAP_NET_BIND_SERVICE`).
    /// Empty: none.
    pub allowed_capabilities: Vec<String>,
    /// Image prefixes a container's image must start with, e.g. `registry.example.com/db/`
    /// (end a registry or path with `/`). Empty: any image.
    pub allowed_images: Vec<String>,
    /// Copy a user Job's own output (its termination message or log tail) into status,
    /// conditions and Events. Off: status says how the Job ended (exit code, reason) but not
    /// what it printed, which may hold whatever its environment held (the database URL).
    pub show_job_output: bool,
    /// PriorityClasses a template's `priorityClassName` may name. Empty: none (a high class
    /// would preempt other namespaces' pods). The admin's `executor.pod.priorityClassName`
    /// replaces a template's either way.
    pub allowed_priority_classes: Vec<String>,
    /// Pod label keys a template may set: exact keys, or prefixes ending in `*`
    /// (`example.com/*`). Empty: none — a label such as `app: shop-api` would put the Job's pod
    /// behind another workload's Service or under its NetworkPolicies. Phasegate's own
    /// `phasegate.dev/` labels are never the template's.
    pub allowed_labels: Vec<String>,
    /// Pod annotation keys a template may set, in the same form. Empty: none (annotations
    /// drive mutating webhooks that run after this policy looked). The AppArmor and seccomp
    /// annotations are judged by their own rules instead.
    pub allowed_annotations: Vec<String>,
    /// Secrets (by name, in the migration's namespace) a template may reference besides the
    /// migration's own database Secret (`spec.database.urlSecretRef.name`): in env, envFrom,
    /// secret volumes, projected sources and imagePullSecrets. `["*"]`: any. Empty: only the
    /// database Secret — another Secret's value written into a table, or relayed by an error,
    /// would reach whoever may read the database or the migration's status.
    pub allowed_secrets: Vec<String>,
    /// The longest `terminationGracePeriodSeconds` a template may ask for; a template that
    /// sets none gets this. A user Job's contract is fenced by SIGTERM only: a stopped attempt
    /// whose tool ignores the signal keeps running (and may COMMIT) until the kubelet kills it
    /// this long after.
    pub max_termination_grace_period_seconds: i64,
}

impl Default for JobPolicy {
    fn default() -> Self {
        JobPolicy {
            enabled: true,
            allowed_service_accounts: Vec::new(),
            allow_service_account_token: false,
            allowed_capabilities: Vec::new(),
            allowed_images: Vec::new(),
            show_job_output: false,
            allowed_priority_classes: Vec::new(),
            allowed_labels: Vec::new(),
            allowed_annotations: Vec::new(),
            allowed_secrets: Vec::new(),
            max_termination_grace_period_seconds: 30,
        }
    }
}

/// A policy document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("not a Job policy (JSON or YAML with the fields of JobPolicy): {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("invalid Job policy: {0}")]
    Invalid(String),
}

impl JobPolicy {
    /// Parse a JSON or YAML document (JSON is YAML); an empty document is the default policy.
    /// The result is [validated](JobPolicy::validate).
    pub fn from_yaml(text: &str) -> Result<JobPolicy, PolicyError> {
        let policy = if text.trim().is_empty() {
            JobPolicy::default()
        } else {
            serde_yaml::from_str(text)?
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Refuse entries that would silently allow more than they say.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_termination_grace_period_seconds < 0 {
            return Err(PolicyError::Invalid(format!(
                "maxTerminationGracePeriodSeconds: {} is negative",
                self.max_termination_grace_period_seconds
            )));
        }
        for sa in &self.allowed_service_accounts {
            if !is_dns_subdomain(sa) {
                return Err(PolicyError::Invalid(format!(
                    "allowedServiceAccounts: {sa:?} is not a ServiceAccount name"
                )));
            }
        }
        for cap in &self.allowed_capabilities {
            let key = capability_key(cap);
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(PolicyError::Invalid(format!(
                    "allowedCapabilities: {cap:?} is not a capability name"
                )));
            }
        }
        for pc in &self.allowed_priority_classes {
            if !is_dns_subdomain(pc) {
                return Err(PolicyError::Invalid(format!(
                    "allowedPriorityClasses: {pc:?} is not a PriorityClass name"
                )));
            }
        }
        for (field, keys) in [
            ("allowedLabels", &self.allowed_labels),
            ("allowedAnnotations", &self.allowed_annotations),
        ] {
            for key in keys {
                let stem = key.strip_suffix('*').unwrap_or(key);
                // `*` alone says "every key"; an empty entry would say nothing.
                let ok = key == "*"
                    || (!stem.is_empty()
                        && !stem.contains('*')
                        && stem.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
                        }));
                if !ok {
                    return Err(PolicyError::Invalid(format!(
                        "{field}: {key:?} is not a key or a prefix ending in *"
                    )));
                }
            }
        }
        for name in &self.allowed_secrets {
            if name != "*" && !is_dns_subdomain(name) {
                return Err(PolicyError::Invalid(format!(
                    "allowedSecrets: {name:?} is not a Secret name (or *)"
                )));
            }
        }
        // An empty prefix would allow every image; an empty list is the way to say that.
        if self.allowed_images.iter().any(|p| p.trim().is_empty()) {
            return Err(PolicyError::Invalid(
                "allowedImages: an empty prefix allows every image; use an empty list instead"
                    .into(),
            ));
        }
        Ok(())
    }

    fn service_account_allowed(&self, name: &str) -> bool {
        name.is_empty()
            || name == "default"
            || self.allowed_service_accounts.iter().any(|a| a == name)
    }

    fn capability_allowed(&self, cap: &str) -> bool {
        let key = capability_key(cap);
        self.allowed_capabilities
            .iter()
            .any(|a| capability_key(a) == key)
    }

    fn label_allowed(&self, key: &str) -> bool {
        !key.starts_with(PHASEGATE_PREFIX) && key_allowed(&self.allowed_labels, key)
    }

    fn annotation_allowed(&self, key: &str) -> bool {
        !key.starts_with(PHASEGATE_PREFIX) && key_allowed(&self.allowed_annotations, key)
    }

    fn secret_allowed(&self, name: &str, database_secret: &str) -> bool {
        name == database_secret || self.allowed_secrets.iter().any(|a| a == "*" || a == name)
    }

    fn image_allowed(&self, image: &str) -> bool {
        self.allowed_images.is_empty()
            || self
                .allowed_images
                .iter()
                .any(|p| image.starts_with(p.as_str()))
    }
}

/// Phasegate's own label and annotation keys: set by the operator, never by a template.
pub const PHASEGATE_PREFIX: &str = "phasegate.dev/";

/// Whether `key` matches an entry of `allowed` (an exact key, or a prefix ending in `*`).
fn key_allowed(allowed: &[String], key: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => a == key,
    })
}

/// One rule a template breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The offending field, relative to the pod template, e.g.
    /// `spec.containers[0].securityContext.privileged`.
    pub field: String,
    /// The rule, one of [`RULES`] (low cardinality: fit for a metric label or an Event reason).
    pub rule: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.field, self.message, self.rule)
    }
}

/// Every rule [`check`] applies, by name.
pub const RULES: &[&str] = &[
    SERVICE_ACCOUNT,
    SERVICE_ACCOUNT_TOKEN,
    HOST_NAMESPACE,
    HOST_PATH,
    HOST_PORT,
    HOST_PROCESS,
    PRIVILEGED,
    PRIVILEGE_ESCALATION,
    CAPABILITIES,
    RUN_AS_NON_ROOT,
    SECCOMP,
    APPARMOR,
    SELINUX,
    PROC_MOUNT,
    SYSCTLS,
    NODE_NAME,
    IMAGE,
    PRIORITY_CLASS,
    LABELS,
    ANNOTATIONS,
    SECRETS,
];

const SERVICE_ACCOUNT: &str = "service-account";
const SERVICE_ACCOUNT_TOKEN: &str = "service-account-token";
const HOST_NAMESPACE: &str = "host-namespace";
const HOST_PATH: &str = "host-path";
const HOST_PORT: &str = "host-port";
const HOST_PROCESS: &str = "host-process";
const PRIVILEGED: &str = "privileged";
const PRIVILEGE_ESCALATION: &str = "privilege-escalation";
const CAPABILITIES: &str = "capabilities";
const RUN_AS_NON_ROOT: &str = "run-as-non-root";
const SECCOMP: &str = "seccomp";
const APPARMOR: &str = "apparmor";
const SELINUX: &str = "selinux";
const PROC_MOUNT: &str = "proc-mount";
const SYSCTLS: &str = "sysctls";
const NODE_NAME: &str = "node-name";
const IMAGE: &str = "image";
const PRIORITY_CLASS: &str = "priority-class";
const LABELS: &str = "labels";
const ANNOTATIONS: &str = "annotations";
const SECRETS: &str = "secret-references";
const TERMINATION_GRACE: &str = "termination-grace";

/// Sysctls the Pod Security Standards call safe (namespaced, isolated from the node).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// SELinux types the Pod Security Standards allow (`spc_t` and the like are unconfined).
pub const SAFE_SELINUX_TYPES: &[&str] = &[
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
/// The deprecated seccomp annotations: older kubelets and runtimes still honour them.
const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// Every rule `template` breaks under `policy`, in field order (empty: allowed), for a
/// migration whose database Secret is `database_secret` (the one Secret a template may always
/// reference). Fields are relative to the template; prefix them with where the template sits
/// (e.g. `spec.expand.job.template.`), as [`describe`] does.
pub fn check(
    template: &PodTemplateSpec,
    policy: &JobPolicy,
    database_secret: &str,
) -> Vec<Violation> {
    let mut out = Out(Vec::new());
    if !policy.enabled {
        return out.0;
    }
    let meta = template.metadata.as_ref();
    if let Some(labels) = meta.and_then(|m| m.labels.as_ref()) {
        template_labels(labels, policy, &mut out);
    }
    if let Some(annotations) = meta.and_then(|m| m.annotations.as_ref()) {
        template_annotations(annotations, policy, &mut out);
        apparmor_annotations(annotations, &mut out);
        seccomp_annotations(annotations, &mut out);
    }
    // A template without a spec runs nothing; the planner refuses it for that reason.
    if let Some(spec) = template.spec.as_ref() {
        check_pod(spec, policy, &mut out);
        for c in containers(spec) {
            check_container(&c, spec.security_context.as_ref(), policy, &mut out);
        }
        secrets(spec, policy, database_secret, &mut out);
    }
    out.0
}

/// Apply what Phasegate imposes on every user template it runs: no ServiceAccount token unless
/// the policy allows one (the template cannot opt back in; [`check`] refuses asking for it).
pub fn enforce(template: &mut PodTemplateSpec, policy: &JobPolicy) {
    if !policy.enabled {
        return;
    }
    if let Some(spec) = template.spec.as_mut() {
        if !policy.allow_service_account_token {
            spec.automount_service_account_token = Some(false);
        }
        // Bounded even when the template says nothing (the kubelet's default is 30 s).
        spec.termination_grace_period_seconds
            .get_or_insert(policy.max_termination_grace_period_seconds);
    }
}

/// One line for a status condition or an Event: every violation, its field prefixed with
/// `prefix` (e.g. `spec.expand.job.template.`).
pub fn describe(prefix: &str, violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{prefix}{v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Out(Vec<Violation>);

impl Out {
    fn push(&mut self, field: impl Into<String>, rule: &'static str, message: impl Into<String>) {
        self.0.push(Violation {
            field: field.into(),
            rule,
            message: message.into(),
        });
    }
}

fn allowed_keys(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "none".to_string()
    } else {
        allowed.join(", ")
    }
}

fn template_labels(labels: &BTreeMap<String, String>, policy: &JobPolicy, out: &mut Out) {
    for key in labels.keys().filter(|k| !policy.label_allowed(k)) {
        let why = if key.starts_with(PHASEGATE_PREFIX) {
            "is Phasegate's own (the operator sets its labels); remove it".to_string()
        } else {
            format!(
                "is not in the Job policy's allowed labels ({}): a pod label can put the Job's \
                 pod behind another workload's Service or under its NetworkPolicies; remove it, \
                 or ask the cluster admin to add it to jobPolicy.allowedLabels",
                allowed_keys(&policy.allowed_labels)
            )
        };
        out.push(
            format!("metadata.labels[{key:?}]"),
            LABELS,
            format!("label {key:?} {why}"),
        );
    }
}

/// Whether a security annotation judged by its own rule (AppArmor, seccomp).
fn security_annotation(key: &str) -> bool {
    key.starts_with(APPARMOR_ANNOTATION_PREFIX)
        || key == SECCOMP_POD_ANNOTATION
        || key.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
}

fn template_annotations(annotations: &BTreeMap<String, String>, policy: &JobPolicy, out: &mut Out) {
    let refused = annotations
        .keys()
        .filter(|k| !security_annotation(k) && !policy.annotation_allowed(k));
    for key in refused {
        let why = if key.starts_with(PHASEGATE_PREFIX) {
            "is Phasegate's own (the operator sets its annotations); remove it".to_string()
        } else {
            format!(
                "is not in the Job policy's allowed annotations ({}): annotations can drive \
                 mutating webhooks that change the pod after this policy looked; remove it, or \
                 ask the cluster admin to add it to jobPolicy.allowedAnnotations",
                allowed_keys(&policy.allowed_annotations)
            )
        };
        out.push(
            format!("metadata.annotations[{key:?}]"),
            ANNOTATIONS,
            format!("annotation {key:?} {why}"),
        );
    }
}

/// Every Secret the pod references (env, envFrom, secret volumes, projected sources,
/// imagePullSecrets) must be the migration's database Secret or one the admin allows. The
/// kubelet reads them for the pod, so the author needs no `get secrets` (issue 23).
fn secrets(spec: &PodSpec, policy: &JobPolicy, database_secret: &str, out: &mut Out) {
    let mut refs: Vec<(String, &str)> = Vec::new();
    for c in containers(spec) {
        for (i, e) in c.env.iter().enumerate() {
            let secret = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            if let Some(r) = secret {
                refs.push((
                    format!("{}.env[{i}].valueFrom.secretKeyRef", c.field),
                    r.name.as_str(),
                ));
            }
        }
        for (i, f) in c.env_from.iter().enumerate() {
            if let Some(r) = f.secret_ref.as_ref() {
                refs.push((
                    format!("{}.envFrom[{i}].secretRef", c.field),
                    r.name.as_str(),
                ));
            }
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(sv) = v.secret.as_ref() {
            let name = sv.secret_name.as_deref().unwrap_or_default();
            refs.push((format!("spec.volumes[{i}].secret"), name));
        }
        let sources = v.projected.as_ref().and_then(|p| p.sources.as_ref());
        for (j, src) in sources.into_iter().flatten().enumerate() {
            if let Some(sp) = src.secret.as_ref() {
                refs.push((
                    format!("spec.volumes[{i}].projected.sources[{j}].secret"),
                    sp.name.as_str(),
                ));
            }
        }
    }
    for (i, r) in spec.image_pull_secrets.iter().flatten().enumerate() {
        refs.push((format!("spec.imagePullSecrets[{i}]"), r.name.as_str()));
    }
    let allowed = std::iter::once(database_secret)
        .chain(policy.allowed_secrets.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    for (field, name) in refs {
        if !policy.secret_allowed(name, database_secret) {
            out.push(
                field,
                SECRETS,
                format!(
                    "references Secret {name:?}, which is neither the migration's database \
                     Secret nor allowed by the Job policy (allowed: {allowed}); use keys of the \
                     database Secret, or ask the cluster admin to add it to \
                     jobPolicy.allowedSecrets"
                ),
            );
        }
    }
}

fn check_pod(spec: &PodSpec, policy: &JobPolicy, out: &mut Out) {
    let allowed_sas = || {
        std::iter::once("default")
            .chain(policy.allowed_service_accounts.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // `serviceAccount` is the deprecated alias the API server still honours.
    for (field, name) in [
        ("spec.serviceAccountName", &spec.service_account_name),
        ("spec.serviceAccount", &spec.service_account),
    ] {
        if let Some(name) = name
            .as_deref()
            .filter(|n| !policy.service_account_allowed(n))
        {
            out.push(
                field,
                SERVICE_ACCOUNT,
                format!(
                    "runs as ServiceAccount {name:?}, which the Job policy does not allow \
                     (allowed: {}); remove it to run as the namespace's default ServiceAccount, \
                     or ask the cluster admin to add it to jobPolicy.allowedServiceAccounts",
                    allowed_sas()
                ),
            );
        }
    }
    if !policy.allow_service_account_token {
        if spec.automount_service_account_token == Some(true) {
            out.push(
                "spec.automountServiceAccountToken",
                SERVICE_ACCOUNT_TOKEN,
                "asks for a ServiceAccount token, which the Job policy does not allow; remove it \
                 (Phasegate sets automountServiceAccountToken: false), or ask the cluster admin \
                 for jobPolicy.allowServiceAccountToken",
            );
        }
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            let sources = v.projected.as_ref().and_then(|p| p.sources.as_ref());
            for (j, s) in sources.into_iter().flatten().enumerate() {
                if s.service_account_token.is_some() {
                    out.push(
                        format!("spec.volumes[{i}].projected.sources[{j}].serviceAccountToken"),
                        SERVICE_ACCOUNT_TOKEN,
                        format!(
                            "volume {:?} projects a ServiceAccount token, which the Job policy \
                             does not allow; remove the serviceAccountToken source",
                            v.name
                        ),
                    );
                }
            }
        }
    }
    for (field, on) in [
        ("spec.hostNetwork", spec.host_network),
        ("spec.hostPID", spec.host_pid),
        ("spec.hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            let what = field.trim_start_matches("spec.");
            out.push(
                field,
                HOST_NAMESPACE,
                format!("shares a namespace of the node; remove {what}"),
            );
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(hp) = &v.host_path {
            out.push(
                format!("spec.volumes[{i}].hostPath"),
                HOST_PATH,
                format!(
                    "volume {:?} mounts the node's path {:?}; use an emptyDir, ConfigMap or \
                     Secret volume instead",
                    v.name, hp.path
                ),
            );
        }
    }
    if let Some(pc) = spec
        .priority_class_name
        .as_deref()
        .filter(|pc| !pc.is_empty() && !policy.allowed_priority_classes.iter().any(|a| a == pc))
    {
        let allowed = if policy.allowed_priority_classes.is_empty() {
            "none".to_string()
        } else {
            policy.allowed_priority_classes.join(", ")
        };
        out.push(
            "spec.priorityClassName",
            PRIORITY_CLASS,
            format!(
                "asks for PriorityClass {pc:?}, which the Job policy does not allow (allowed: \
                 {allowed}); remove it (the cluster admin's executor.pod.priorityClassName \
                 applies to every Job), or ask the cluster admin to add it to \
                 jobPolicy.allowedPriorityClasses"
            ),
        );
    }
    let max_grace = policy.max_termination_grace_period_seconds;
    if let Some(grace) = spec
        .termination_grace_period_seconds
        .filter(|g| *g > max_grace)
    {
        out.push(
            "spec.terminationGracePeriodSeconds",
            TERMINATION_GRACE,
            format!(
                "asks for {grace} s between SIGTERM and SIGKILL, more than the Job policy's \
                 {max_grace} s: a stopped attempt whose tool ignores SIGTERM would keep running \
                 that long; lower it (or ask the cluster admin to raise \
                 jobPolicy.maxTerminationGracePeriodSeconds)"
            ),
        );
    }
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        out.push(
            "spec.nodeName",
            NODE_NAME,
            format!(
                "pins the pod onto node {node:?}, past the scheduler; remove it (use a \
                 nodeSelector or affinity to choose nodes)"
            ),
        );
    }
    if let Some(sc) = spec.security_context.as_ref() {
        check_pod_security_context(sc, out);
    }
}

fn check_pod_security_context(sc: &PodSecurityContext, out: &mut Out) {
    let at = "spec.securityContext";
    if sc.run_as_user == Some(0) {
        out.push(
            format!("{at}.runAsUser"),
            RUN_AS_NON_ROOT,
            "runs as root (uid 0); set a non-zero runAsUser, or remove it and let the image's \
             non-root user apply",
        );
    }
    seccomp(at, sc.seccomp_profile.as_ref(), out);
    apparmor(at, sc.app_armor_profile.as_ref(), out);
    selinux(at, sc.se_linux_options.as_ref(), out);
    host_process(at, sc.windows_options.as_ref(), out);
    for (i, s) in sc.sysctls.iter().flatten().enumerate() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            out.push(
                format!("{at}.sysctls[{i}]"),
                SYSCTLS,
                format!(
                    "sets sysctl {:?}, which is not one of the safe sysctls ({}); remove it",
                    s.name,
                    SAFE_SYSCTLS.join(", ")
                ),
            );
        }
    }
}

/// A container of any kind (containers, initContainers, ephemeralContainers).
struct ContainerRef<'a> {
    field: String,
    name: &'a str,
    image: Option<&'a str>,
    ports: &'a [ContainerPort],
    security_context: Option<&'a SecurityContext>,
    env: &'a [EnvVar],
    env_from: &'a [EnvFromSource],
}

fn containers(spec: &PodSpec) -> Vec<ContainerRef<'_>> {
    fn regular<'a>(kind: &str, list: &'a [Container]) -> impl Iterator<Item = ContainerRef<'a>> {
        let kind = kind.to_string();
        list.iter().enumerate().map(move |(i, c)| ContainerRef {
            field: format!("spec.{kind}[{i}]"),
            name: c.name.as_str(),
            image: c.image.as_deref(),
            ports: c.ports.as_deref().unwrap_or_default(),
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            env_from: c.env_from.as_deref().unwrap_or_default(),
        })
    }
    let ephemeral: &[EphemeralContainer] = spec.ephemeral_containers.as_deref().unwrap_or_default();
    regular("containers", &spec.containers)
        .chain(regular(
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ))
        .chain(ephemeral.iter().enumerate().map(|(i, c)| ContainerRef {
            field: format!("spec.ephemeralContainers[{i}]"),
            name: c.name.as_str(),
            image: c.image.as_deref(),
            ports: c.ports.as_deref().unwrap_or_default(),
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            env_from: c.env_from.as_deref().unwrap_or_default(),
        }))
        .collect()
}

fn check_container(
    c: &ContainerRef<'_>,
    pod: Option<&PodSecurityContext>,
    policy: &JobPolicy,
    out: &mut Out,
) {
    let name = c.name;
    for (j, p) in c.ports.iter().enumerate() {
        if p.host_port.is_some_and(|hp| hp != 0) {
            out.push(
                format!("{}.ports[{j}].hostPort", c.field),
                HOST_PORT,
                format!("container {name:?} binds a port of the node; remove hostPort"),
            );
        }
    }
    if !policy.image_allowed(c.image.unwrap_or_default()) {
        out.push(
            format!("{}.image", c.field),
            IMAGE,
            format!(
                "container {name:?} runs image {:?}, which starts with none of the allowed \
                 prefixes ({}); use an allowed image or ask the cluster admin to extend \
                 jobPolicy.allowedImages",
                c.image.unwrap_or_default(),
                policy.allowed_images.join(", ")
            ),
        );
    }
    let sc = c.security_context;
    let at = format!("{}.securityContext", c.field);
    // runAsNonRoot: the container's own setting wins over the pod's.
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod.and_then(|p| p.run_as_non_root));
    if non_root != Some(true) {
        let explicit = sc.and_then(|s| s.run_as_non_root) == Some(false);
        out.push(
            format!("{at}.runAsNonRoot"),
            RUN_AS_NON_ROOT,
            if explicit {
                format!("container {name:?} sets runAsNonRoot: false; remove it or set it to true")
            } else {
                format!(
                    "container {name:?} may run as root; set runAsNonRoot: true in \
                     spec.securityContext (every container) or in this container's \
                     securityContext, with a non-zero runAsUser if the image's user is root"
                )
            },
        );
    }
    let Some(sc) = sc else {
        privilege_escalation(&at, name, None, out);
        return;
    };
    if sc.run_as_user == Some(0) {
        out.push(
            format!("{at}.runAsUser"),
            RUN_AS_NON_ROOT,
            format!("container {name:?} runs as root (uid 0); set a non-zero runAsUser"),
        );
    }
    if sc.privileged == Some(true) {
        out.push(
            format!("{at}.privileged"),
            PRIVILEGED,
            format!(
                "container {name:?} is privileged (full access to the node); remove privileged"
            ),
        );
    }
    privilege_escalation(&at, name, sc.allow_privilege_escalation, out);
    let added = sc.capabilities.as_ref().and_then(|c| c.add.as_ref());
    for (k, cap) in added.into_iter().flatten().enumerate() {
        if !policy.capability_allowed(cap) {
            let allowed = if policy.allowed_capabilities.is_empty() {
                "none".to_string()
            } else {
                policy.allowed_capabilities.join(", ")
            };
            out.push(
                format!("{at}.capabilities.add[{k}]"),
                CAPABILITIES,
                format!(
                    "container {name:?} adds capability {cap:?}, which the Job policy does not \
                     allow (allowed: {allowed}); remove it"
                ),
            );
        }
    }
    if let Some(pm) = sc.proc_mount.as_deref().filter(|pm| *pm != "Default") {
        out.push(
            format!("{at}.procMount"),
            PROC_MOUNT,
            format!("container {name:?} sets procMount {pm:?} (unmasked /proc); remove it"),
        );
    }
    seccomp(&at, sc.seccomp_profile.as_ref(), out);
    apparmor(&at, sc.app_armor_profile.as_ref(), out);
    selinux(&at, sc.se_linux_options.as_ref(), out);
    host_process(&at, sc.windows_options.as_ref(), out);
}

/// Non-root is not enough: unless `allowPrivilegeEscalation` is `false` (no_new_privs), a
/// setuid binary in the image makes the process root again.
fn privilege_escalation(at: &str, name: &str, allow: Option<bool>, out: &mut Out) {
    let message = match allow {
        Some(false) => return,
        Some(true) => format!(
            "container {name:?} allows privilege escalation; set allowPrivilegeEscalation: false"
        ),
        None => format!(
            "container {name:?} does not set allowPrivilegeEscalation: false, so a setuid \
             binary in its image can make it root despite runAsNonRoot; set \
             allowPrivilegeEscalation: false in the container's securityContext"
        ),
    };
    out.push(
        format!("{at}.allowPrivilegeEscalation"),
        PRIVILEGE_ESCALATION,
        message,
    );
}

fn seccomp(at: &str, profile: Option<&SeccompProfile>, out: &mut Out) {
    if profile.is_some_and(|p| p.type_ == "Unconfined") {
        out.push(
            format!("{at}.seccompProfile.type"),
            SECCOMP,
            "turns seccomp off (Unconfined); use RuntimeDefault or a Localhost profile",
        );
    }
}

fn apparmor(at: &str, profile: Option<&AppArmorProfile>, out: &mut Out) {
    if profile.is_some_and(|p| p.type_ == "Unconfined") {
        out.push(
            format!("{at}.appArmorProfile.type"),
            APPARMOR,
            "turns AppArmor off (Unconfined); use RuntimeDefault or a Localhost profile",
        );
    }
}

fn apparmor_annotations(annotations: &BTreeMap<String, String>, out: &mut Out) {
    for (key, value) in annotations {
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX) && value == "unconfined" {
            out.push(
                format!("metadata.annotations[{key:?}]"),
                APPARMOR,
                "turns AppArmor off (unconfined); remove the annotation",
            );
        }
    }
}

/// The deprecated seccomp annotations take the values of the Pod Security Standards' baseline:
/// `runtime/default`, `docker/default` or `localhost/<profile>`; anything else (`unconfined`)
/// turns seccomp off where they are still honoured.
fn seccomp_annotations(annotations: &BTreeMap<String, String>, out: &mut Out) {
    for (key, value) in annotations {
        let seccomp_key =
            key == SECCOMP_POD_ANNOTATION || key.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX);
        let confined = value == "runtime/default"
            || value == "docker/default"
            || value.starts_with("localhost/");
        if seccomp_key && !confined {
            out.push(
                format!("metadata.annotations[{key:?}]"),
                SECCOMP,
                format!(
                    "sets the deprecated seccomp annotation to {value:?}; remove it (or use \
                     runtime/default or localhost/<profile>) and set \
                     securityContext.seccompProfile instead"
                ),
            );
        }
    }
}

fn selinux(at: &str, options: Option<&SELinuxOptions>, out: &mut Out) {
    let Some(o) = options else { return };
    if let Some(t) = o.type_.as_deref().filter(|t| !t.is_empty()) {
        if !SAFE_SELINUX_TYPES.contains(&t) {
            out.push(
                format!("{at}.seLinuxOptions.type"),
                SELINUX,
                format!(
                    "sets SELinux type {t:?}; use one of {} or remove it",
                    SAFE_SELINUX_TYPES.join(", ")
                ),
            );
        }
    }
    for (field, value) in [("user", &o.user), ("role", &o.role)] {
        if value.as_deref().is_some_and(|v| !v.is_empty()) {
            out.push(
                format!("{at}.seLinuxOptions.{field}"),
                SELINUX,
                format!("sets an SELinux {field}; remove it"),
            );
        }
    }
}

fn host_process(at: &str, options: Option<&WindowsSecurityContextOptions>, out: &mut Out) {
    if options.and_then(|w| w.host_process) == Some(true) {
        out.push(
            format!("{at}.windowsOptions.hostProcess"),
            HOST_PROCESS,
            "runs as a Windows host process (full access to the node); remove hostProcess",
        );
    }
}

/// `CAP_NET_BIND_SERVICE`, `net_bind_service` → `NET_BIND_SERVICE` (runtimes accept either).
fn capability_key(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_string)
        .unwrap_or(upper)
}

/// A DNS-1123 subdomain, the shape of a ServiceAccount name.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
