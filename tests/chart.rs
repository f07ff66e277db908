//! The Helm chart (charts/phasegate), checked without helm or a cluster:
//! the CRD is the generated one, and the RBAC grants exactly what the operator uses.
//! `hack/chart-test.sh` adds helm lint/template, a server-side dry run and RBAC probes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every grant the chart may make: (named template in rbac.yaml, apiGroup, resource) → verbs.
/// It mirrors what src/controller does; a rule beyond it (a verb, a resource, Secrets) fails.
/// When the code needs a new permission, add it here and in rbac.yaml together.
const EXPECTED: &[(&str, &str, &str, &[&str])] = &[
    // Controller::new watch (list+watch), reads of one migration, status by server-side apply.
    (
        "phasegate.operatorRules",
        "phasegate.dev",
        "databasemigrations",
        &["get", "list", "watch"],
    ),
    (
        "phasegate.operatorRules",
        "phasegate.dev",
        "databasemigrations/status",
        &["patch"],
    ),
    // jobs::create (create; get on 409, and delete of a Job that claims the migration but whose
    // UID was never recorded), jobs::observe (get), Controller::owns (list, watch), jobs::stop
    // (delete: the fence's fast stop).
    (
        "phasegate.operatorRules",
        "batch",
        "jobs",
        &["create", "get", "list", "watch", "delete"],
    ),
    // workloads::observe_targets (get by name, list by selector), Controller::watches.
    (
        "phasegate.operatorRules",
        "apps",
        "deployments",
        &["get", "list", "watch"],
    ),
    (
        "phasegate.operatorRules",
        "apps",
        "statefulsets",
        &["get", "list", "watch"],
    ),
    (
        "phasegate.operatorRules",
        "apps",
        "daemonsets",
        &["get", "list", "watch"],
    ),
    // history::observe: the targets' ReplicaSets and ControllerRevisions (their revisions),
    // listed by selector, never watched.
    ("phasegate.operatorRules", "apps", "replicasets", &["list"]),
    (
        "phasegate.operatorRules",
        "apps",
        "controllerrevisions",
        &["list"],
    ),
    // Argo Rollouts targets (controller/argo.rs), read and watched like apps/v1 workloads.
    (
        "phasegate.operatorRules",
        "argoproj.io",
        "rollouts",
        &["get", "list", "watch"],
    ),
    // Pods of targets and executor pods' termination messages (list), Controller::watches.
    ("phasegate.operatorRules", "", "pods", &["list", "watch"]),
    // jobs::executor_wait: the tail of a running executor's log (what it waits on).
    ("phasegate.operatorRules", "", "pods/log", &["get"]),
    // kube::runtime::events::Recorder: create, and patch for a repeated Event's series;
    // jobs::stuck_reason lists a Job's FailedCreate Events.
    (
        "phasegate.operatorRules",
        "events.k8s.io",
        "events",
        &["create", "patch", "list"],
    ),
    // Not the operator's: the `-author` ClusterRole for people who write migrations (spec only).
    (
        "phasegate.authorRules",
        "phasegate.dev",
        "databasemigrations",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    ),
    // src/leader.rs via kube-lease-manager: get, create (first start), patch (server-side apply
    // and strategic merge to take, renew and release). Never update or delete.
    (
        "phasegate.leaderElectionRules",
        "coordination.k8s.io",
        "leases",
        &["get", "create", "patch"],
    ),
];

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

type Grants = BTreeMap<(String, String, String), BTreeSet<String>>;

/// The rules of rbac.yaml, by the `define` block they are in. Rules are one flow mapping per
/// line (`- {apiGroups: [...], resources: [...], verbs: [...]}`); any other line that looks
/// like part of a rule is an error, so a block-style rule cannot slip past this test.
fn chart_grants() -> Grants {
    let text = read(&root().join("charts/phasegate/templates/rbac.yaml"));
    let mut grants = Grants::new();
    let mut block: Option<String> = None;
    let mut in_comment = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        // Template comments ({{/* ... */}}) may span lines.
        if in_comment || t.contains("/*") {
            in_comment = !t.contains("*/");
            continue;
        }
        if let Some(rest) = t
            .strip_prefix("{{- define \"")
            .or_else(|| t.strip_prefix("{{ define \""))
        {
            block = Some(rest.split('"').next().unwrap_or_default().to_string());
            continue;
        }
        if t.starts_with("{{- end") && block.is_some() && !t.contains("if") {
            block = None;
            continue;
        }
        let lower = t.to_ascii_lowercase();
        let looks_like_rule = [
            "apigroups",
            "resources",
            "verbs",
            "resourcenames",
            "nonresourceurls",
        ]
        .iter()
        .any(|k| lower.contains(k));
        if t.starts_with('#') || !looks_like_rule {
            continue;
        }
        let flow = t
            .strip_prefix("- ")
            .unwrap_or_else(|| panic!("rbac.yaml:{}: not a one-line rule: {t}", n + 1));
        let rule: Rule =
            serde_yaml::from_str(flow).unwrap_or_else(|e| panic!("rbac.yaml:{}: {e}: {t}", n + 1));
        let scope = block
            .clone()
            .unwrap_or_else(|| panic!("rbac.yaml:{}: rule outside a define block", n + 1));
        for g in &rule.api_groups {
            for r in &rule.resources {
                grants
                    .entry((scope.clone(), g.clone(), r.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    grants
}

/// `text` without its `{{/* … */}}` template comments.
fn strip_template_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let generated = std::fs::read(root().join("crds/databasemigrations.phasegate.dev.yaml"))
        .expect("crds/ CRD");
    let chart =
        std::fs::read(root().join("charts/phasegate/crds/databasemigrations.phasegate.dev.yaml"))
            .expect("chart CRD");
    assert!(
        generated == chart,
        "charts/phasegate/crds/databasemigrations.phasegate.dev.yaml differs from crds/: \
         cp crds/databasemigrations.phasegate.dev.yaml charts/phasegate/crds/"
    );
    let names: Vec<_> = std::fs::read_dir(root().join("charts/phasegate/crds"))
        .expect("charts/phasegate/crds")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    assert_eq!(
        names,
        ["databasemigrations.phasegate.dev.yaml"],
        "unexpected files in the chart's crds/"
    );
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let got = chart_grants();
    let want: Grants = EXPECTED
        .iter()
        .map(|(scope, g, r, verbs)| {
            (
                (scope.to_string(), g.to_string(), r.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    let fmt = |g: &Grants| {
        g.iter()
            .map(|((s, grp, r), v)| {
                format!(
                    "  {s}: {}/{r}: {:?}",
                    if grp.is_empty() { "core" } else { grp },
                    v
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        got == want,
        "charts/phasegate/templates/rbac.yaml grants\n{}\nbut the operator uses exactly\n{}",
        fmt(&got),
        fmt(&want)
    );
}

#[test]
fn no_rule_mentions_secrets_or_wildcards() {
    for ((scope, group, resource), verbs) in chart_grants() {
        assert!(
            !resource.to_ascii_lowercase().contains("secret"),
            "{scope} grants {verbs:?} on {resource}: the operator never reads Secrets"
        );
        assert!(
            !group.contains('*') && !resource.contains('*'),
            "{scope} grants a wildcard: {group}/{resource}"
        );
        assert!(
            !verbs.contains("*"),
            "{scope} grants every verb on {group}/{resource}"
        );
    }
    // Rules live only in rbac.yaml: no other template may declare a Role or ClusterRole.
    for entry in std::fs::read_dir(root().join("charts/phasegate/templates")).expect("templates") {
        let path = entry.expect("dir entry").path();
        let text = read(&path);
        if path.file_name().is_some_and(|n| n == "rbac.yaml") {
            for line in strip_template_comments(&text)
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.contains("{{"))
            {
                assert!(
                    !line.to_ascii_lowercase().contains("secret"),
                    "rbac.yaml mentions Secrets: {line}"
                );
            }
            continue;
        }
        // A PrometheusRule's alerting `rules:` are not RBAC: it must name no verbs.
        let rbac_rules = if text.contains("kind: PrometheusRule") {
            text.contains("verbs:") || text.contains("apiGroups:")
        } else {
            text.contains("rules:")
        };
        assert!(
            !text.contains("kind: Role") && !text.contains("kind: ClusterRole") && !rbac_rules,
            "{} declares RBAC rules; keep them in rbac.yaml",
            path.display()
        );
    }
}

#[test]
fn default_values_run_the_operator_restricted() {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read(&root().join("charts/phasegate/values.yaml")))
            .expect("values.yaml");
    let get = |path: &str| -> serde_yaml::Value {
        path.split('.').fold(values.clone(), |v, k| {
            v.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("values.yaml lacks {path}"))
        })
    };
    let yes = serde_yaml::Value::Bool(true);
    let no = serde_yaml::Value::Bool(false);
    assert_eq!(get("podSecurityContext.runAsNonRoot"), yes);
    assert_eq!(
        get("podSecurityContext.seccompProfile.type"),
        serde_yaml::Value::from("RuntimeDefault")
    );
    assert_eq!(get("securityContext.runAsNonRoot"), yes);
    assert_eq!(get("securityContext.readOnlyRootFilesystem"), yes);
    assert_eq!(get("securityContext.allowPrivilegeEscalation"), no);
    assert_eq!(
        get("securityContext.seccompProfile.type"),
        serde_yaml::Value::from("RuntimeDefault")
    );
    assert_eq!(
        get("securityContext.capabilities.drop"),
        serde_yaml::Value::Sequence(vec!["ALL".into()])
    );
    assert_eq!(
        get("livenessProbe.httpGet.path"),
        serde_yaml::Value::from("/healthz")
    );
    assert_eq!(
        get("readinessProbe.httpGet.path"),
        serde_yaml::Value::from("/readyz")
    );
    assert!(
        get("resources.requests.memory").is_string() && get("resources.limits.memory").is_string()
    );
}

fn values() -> serde_yaml::Value {
    serde_yaml::from_str(&read(&root().join("charts/phasegate/values.yaml"))).expect("values.yaml")
}

/// values.yaml's `jobPolicy` is a valid `JobPolicy` document (no unknown keys) and equals the
/// operator's built-in default, so `helm install` with defaults changes nothing.
#[test]
fn job_policy_values_are_the_operator_default() {
    let doc = values()
        .get("jobPolicy")
        .cloned()
        .expect("values.yaml lacks jobPolicy");
    let text = serde_yaml::to_string(&doc).expect("yaml");
    let policy = phasegate::policy::JobPolicy::from_yaml(&text)
        .unwrap_or_else(|e| panic!("values.yaml jobPolicy: {e}"));
    assert_eq!(policy, phasegate::policy::JobPolicy::default());
    // Every field is spelled out, so the values document the whole policy.
    let want = serde_yaml::to_value(phasegate::policy::JobPolicy::default()).expect("yaml");
    let keys = |v: &serde_yaml::Value| -> BTreeSet<String> {
        v.as_mapping()
            .expect("a mapping")
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(keys(&doc), keys(&want), "jobPolicy keys in values.yaml");
}

/// The operator reads the policy the chart renders: one file name, one env variable.
#[test]
fn operator_reads_the_rendered_job_policy() {
    let dir = root().join("charts/phasegate/templates");
    let deployment = read(&dir.join("deployment.yaml"));
    let configmap = read(&dir.join("job-policy.yaml"));
    for needle in [
        "name: PHASEGATE_JOB_POLICY",
        "value: /etc/phasegate/job-policy.yaml",
        "mountPath: /etc/phasegate",
        "name: {{ include \"phasegate.fullname\" . }}-job-policy",
        "checksum/job-policy",
    ] {
        assert!(
            deployment.contains(needle),
            "deployment.yaml lacks {needle:?}"
        );
    }
    assert!(configmap.contains("job-policy.yaml: |"));
    assert!(configmap.contains("toYaml .Values.jobPolicy"));
    let main = read(&root().join("src/main.rs"));
    assert!(main.contains("env = \"PHASEGATE_JOB_POLICY\""));
}

/// values.yaml's `executor.pod` is what the operator reads from PHASEGATE_EXECUTOR_POD: every
/// key the operator knows, no other, and the defaults set nothing.
#[test]
fn executor_pod_values_are_what_the_operator_reads() {
    let doc = values()["executor"]["pod"].clone();
    let json = serde_json::to_string(&doc).expect("json");
    let pod = phasegate::controller::ExecutorPod::from_json(&json)
        .unwrap_or_else(|e| panic!("values.yaml executor.pod: {e}"));
    assert_eq!(pod, phasegate::controller::ExecutorPod::default());
    let keys: BTreeSet<String> = doc
        .as_mapping()
        .expect("executor.pod is a mapping")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = [
        "nodeSelector",
        "tolerations",
        "annotations",
        "priorityClassName",
        "resources",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(keys, want, "executor.pod keys in values.yaml");
    let deployment = read(&root().join("charts/phasegate/templates/deployment.yaml"));
    assert!(deployment.contains("name: PHASEGATE_EXECUTOR_POD"));
    assert!(deployment.contains("toJson .Values.executor.pod"));
    assert!(read(&root().join("src/main.rs")).contains("env = \"PHASEGATE_EXECUTOR_POD\""));
}

/// Every rule of src/policy is also a rule of the admission policy, and it is on by default.
#[test]
fn admission_policy_covers_every_rule() {
    let vap = read(&root().join("charts/phasegate/templates/admission-policy.yaml"));
    for rule in phasegate::policy::RULES {
        assert!(
            vap.contains(&format!("\"rule\" \"{rule}\"")),
            "admission-policy.yaml has no validation for the rule {rule}"
        );
    }
    for phase in ["expand", "contract"] {
        assert!(vap.contains(&format!("\"{phase}\"")));
    }
    let v = values();
    assert_eq!(
        v["admissionPolicy"]["enabled"],
        serde_yaml::Value::Bool(true)
    );
    assert_eq!(
        v["admissionPolicy"]["validationActions"],
        serde_yaml::from_str::<serde_yaml::Value>("[Deny]").expect("yaml")
    );
}

/// `base` with `patch` merged in: objects merge, anything else replaces (jq's `*`, which
/// hack/chart-test.sh uses on the same table).
fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The operator's field with containers and volumes named as the admission policy names
/// them (`spec.containers[0]` → `spec.containers[name=psql]`).
fn by_name(field: &str, template: &serde_json::Value) -> String {
    let mut out = field.to_string();
    for kind in [
        "containers",
        "initContainers",
        "ephemeralContainers",
        "volumes",
    ] {
        let list = template["spec"][kind]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, item) in list.iter().enumerate() {
            let name = item["name"].as_str().unwrap_or_default();
            let at = format!("spec.{kind}[{i}]");
            if out.starts_with(&at) {
                out = format!("spec.{kind}[name={name}]{}", &out[at.len()..]);
            }
        }
    }
    out
}

/// The shared table of tests/data/policy-cases.json through the operator's check: exactly the
/// rules the table names, each at its field. hack/chart-test.sh runs the same table through the
/// chart's ValidatingAdmissionPolicy, so the two agree on every case.
#[test]
fn policy_cases_through_the_operator() {
    let table: serde_json::Value =
        serde_json::from_str(&read(&root().join("tests/data/policy-cases.json")))
            .expect("policy-cases.json");
    let policy = phasegate::policy::JobPolicy::from_yaml(&table["policy"].to_string())
        .expect("the table's policy");
    let cases = table["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let template = match case.get("template") {
            Some(t) => t.clone(),
            None => {
                let mut t = table["base"].clone();
                merge(&mut t, &case["patch"]);
                t
            }
        };
        let pod: k8s_openapi::api::core::v1::PodTemplateSpec =
            serde_json::from_value(template.clone()).expect("a pod template");
        let secret = table["databaseSecret"].as_str().expect("databaseSecret");
        let got: Vec<(String, &str)> = phasegate::policy::check(&pod, &policy, secret)
            .into_iter()
            .map(|v| (by_name(&v.field, &template), v.rule))
            .collect();
        let want: Vec<(&str, &str)> = case["refused"]
            .as_array()
            .expect("refused")
            .iter()
            .map(|r| {
                (
                    r["field"].as_str().expect("field"),
                    r["rule"].as_str().expect("rule"),
                )
            })
            .collect();
        let got_rules: BTreeSet<&str> = got.iter().map(|(_, r)| *r).collect();
        let want_rules: BTreeSet<&str> = want.iter().map(|(_, r)| *r).collect();
        let fields_named = want
            .iter()
            .all(|(f, r)| got.iter().any(|(gf, gr)| gr == r && gf.starts_with(f)));
        if got_rules != want_rules || !fields_named {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the operator disagrees with tests/data/policy-cases.json:\n{}",
        failures.join("\n")
    );
}
