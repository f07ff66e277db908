use serde_json::{json, Value};

use super::*;

/// A template the default policy admits: psql as a non-root user.
fn plain() -> Value {
    json!({
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 70},
            "containers": [{
                "name": "psql",
                "image": "postgres:17-alpine",
                "command": ["psql", "$(PHASEGATE_DATABASE_URL)", "-c", "SELECT 1"],
                "securityContext": {"allowPrivilegeEscalation": false},
            }],
        },
    })
}

/// `base` with `patch` merged in (RFC 7396: objects merge, anything else replaces, null deletes).
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

fn template(patch: Value) -> PodTemplateSpec {
    let mut t = plain();
    merge(&mut t, patch);
    serde_json::from_value(t).expect("a pod template")
}

/// (field, rule) of each violation.
type Found = Vec<(String, &'static str)>;

fn found(t: &PodTemplateSpec, policy: &JobPolicy) -> Found {
    check(t, policy, "shop-db")
        .into_iter()
        .map(|v| (v.field, v.rule))
        .collect()
}

/// A container patch on top of the plain psql container (containers replace as a whole).
fn container(extra: Value) -> Value {
    let mut c = plain()["spec"]["containers"][0].clone();
    merge(&mut c, extra);
    c
}

#[test]
fn plain_template_is_admitted() {
    assert_eq!(found(&template(json!({})), &JobPolicy::default()), vec![]);
}

#[test]
fn rule_table() {
    let d = JobPolicy::default();
    let c0 = "spec.containers[0]";
    let cases: Vec<(&str, Value, Found)> = vec![
        (
            "foreign serviceAccountName",
            json!({"spec": {"serviceAccountName": "deployer"}}),
            vec![("spec.serviceAccountName".into(), "service-account")],
        ),
        (
            "deprecated serviceAccount alias",
            json!({"spec": {"serviceAccount": "deployer"}}),
            vec![("spec.serviceAccount".into(), "service-account")],
        ),
        (
            "default ServiceAccount named explicitly",
            json!({"spec": {"serviceAccountName": "default"}}),
            vec![],
        ),
        (
            "empty serviceAccountName",
            json!({"spec": {"serviceAccountName": ""}}),
            vec![],
        ),
        (
            "token asked for",
            json!({"spec": {"automountServiceAccountToken": true}}),
            vec![(
                "spec.automountServiceAccountToken".into(),
                "service-account-token",
            )],
        ),
        (
            "token refused explicitly",
            json!({"spec": {"automountServiceAccountToken": false}}),
            vec![],
        ),
        (
            "projected token volume",
            json!({"spec": {"volumes": [
                {"name": "cfg", "configMap": {"name": "x"}},
                {"name": "tok", "projected": {"sources": [
                    {"configMap": {"name": "x"}},
                    {"serviceAccountToken": {"path": "token"}},
                ]}},
            ]}}),
            vec![(
                "spec.volumes[1].projected.sources[1].serviceAccountToken".into(),
                "service-account-token",
            )],
        ),
        (
            "hostNetwork",
            json!({"spec": {"hostNetwork": true}}),
            vec![("spec.hostNetwork".into(), "host-namespace")],
        ),
        (
            "hostPID",
            json!({"spec": {"hostPID": true}}),
            vec![("spec.hostPID".into(), "host-namespace")],
        ),
        (
            "hostIPC",
            json!({"spec": {"hostIPC": true}}),
            vec![("spec.hostIPC".into(), "host-namespace")],
        ),
        (
            "host namespaces off explicitly",
            json!({"spec": {"hostNetwork": false, "hostPID": false, "hostIPC": false}}),
            vec![],
        ),
        (
            "hostPath volume",
            json!({"spec": {"volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "root", "hostPath": {"path": "/"}},
            ]}}),
            vec![("spec.volumes[1].hostPath".into(), "host-path")],
        ),
        (
            "hostPort",
            json!({"spec": {"containers": [container(json!({"ports": [
                {"containerPort": 5432},
                {"containerPort": 80, "hostPort": 80},
            ]}))]}}),
            vec![(format!("{c0}.ports[1].hostPort"), "host-port")],
        ),
        (
            "hostPort 0 means none",
            json!({"spec": {"containers": [container(json!({"ports": [
                {"containerPort": 80, "hostPort": 0},
            ]}))]}}),
            vec![],
        ),
        (
            "privileged",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"privileged": true},
            }))]}}),
            vec![(format!("{c0}.securityContext.privileged"), "privileged")],
        ),
        (
            "privileged false",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"privileged": false, "allowPrivilegeEscalation": false},
            }))]}}),
            vec![],
        ),
        (
            "allowPrivilegeEscalation",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"allowPrivilegeEscalation": true},
            }))]}}),
            vec![(
                format!("{c0}.securityContext.allowPrivilegeEscalation"),
                "privilege-escalation",
            )],
        ),
        (
            "added capability",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}},
            }))]}}),
            vec![(
                format!("{c0}.securityContext.capabilities.add[0]"),
                "capabilities",
            )],
        ),
        (
            "dropping capabilities is fine",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"capabilities": {"drop": ["ALL"]}},
            }))]}}),
            vec![],
        ),
        (
            "no runAsNonRoot anywhere",
            json!({"spec": {"securityContext": null}}),
            vec![(
                format!("{c0}.securityContext.runAsNonRoot"),
                "run-as-non-root",
            )],
        ),
        (
            "runAsNonRoot on the container only",
            json!({"spec": {"securityContext": null, "containers": [container(json!({
                "securityContext": {"runAsNonRoot": true},
            }))]}}),
            vec![],
        ),
        (
            "container overrides the pod's runAsNonRoot",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"runAsNonRoot": false},
            }))]}}),
            vec![(
                format!("{c0}.securityContext.runAsNonRoot"),
                "run-as-non-root",
            )],
        ),
        (
            "pod runAsUser 0",
            json!({"spec": {"securityContext": {"runAsUser": 0}}}),
            vec![("spec.securityContext.runAsUser".into(), "run-as-non-root")],
        ),
        (
            "container runAsUser 0",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"runAsUser": 0},
            }))]}}),
            vec![(format!("{c0}.securityContext.runAsUser"), "run-as-non-root")],
        ),
        (
            "pod seccomp Unconfined",
            json!({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
            vec![("spec.securityContext.seccompProfile.type".into(), "seccomp")],
        ),
        (
            "container seccomp Unconfined",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"seccompProfile": {"type": "Unconfined"}},
            }))]}}),
            vec![(
                format!("{c0}.securityContext.seccompProfile.type"),
                "seccomp",
            )],
        ),
        (
            "seccomp RuntimeDefault and Localhost",
            json!({"spec": {
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container(json!({"securityContext": {"seccompProfile": {
                    "type": "Localhost", "localhostProfile": "profiles/db.json",
                }}}))],
            }}),
            vec![],
        ),
        (
            "pod AppArmor Unconfined",
            json!({"spec": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}}),
            vec![(
                "spec.securityContext.appArmorProfile.type".into(),
                "apparmor",
            )],
        ),
        (
            "container AppArmor Unconfined",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"appArmorProfile": {"type": "Unconfined"}},
            }))]}}),
            vec![(
                format!("{c0}.securityContext.appArmorProfile.type"),
                "apparmor",
            )],
        ),
        (
            "AppArmor annotation unconfined",
            json!({"metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/psql": "unconfined",
                "container.apparmor.security.beta.kubernetes.io/other": "runtime/default",
            }}}),
            vec![(
                "metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/psql\"]"
                    .into(),
                "apparmor",
            )],
        ),
        (
            "SELinux spc_t, user and role",
            json!({"spec": {"securityContext": {"seLinuxOptions": {
                "type": "spc_t", "user": "system_u", "role": "system_r", "level": "s0:c1",
            }}}}),
            vec![
                ("spec.securityContext.seLinuxOptions.type".into(), "selinux"),
                ("spec.securityContext.seLinuxOptions.user".into(), "selinux"),
                ("spec.securityContext.seLinuxOptions.role".into(), "selinux"),
            ],
        ),
        (
            "SELinux container_t with a level",
            json!({"spec": {"containers": [container(json!({"securityContext": {
                "seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
            }}))]}}),
            vec![],
        ),
        (
            "procMount Unmasked",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"procMount": "Unmasked"},
            }))]}}),
            vec![(format!("{c0}.securityContext.procMount"), "proc-mount")],
        ),
        (
            "procMount Default",
            json!({"spec": {"containers": [container(json!({
                "securityContext": {"procMount": "Default"},
            }))]}}),
            vec![],
        ),
        (
            "unsafe sysctl",
            json!({"spec": {"securityContext": {"sysctls": [
                {"name": "net.ipv4.tcp_syncookies", "value": "1"},
                {"name": "kernel.core_pattern", "value": "|/tmp/x"},
            ]}}}),
            vec![("spec.securityContext.sysctls[1]".into(), "sysctls")],
        ),
        (
            "nodeName",
            json!({"spec": {"nodeName": "control-plane-0"}}),
            vec![("spec.nodeName".into(), "node-name")],
        ),
        (
            "Windows hostProcess",
            json!({"spec": {"securityContext": {"windowsOptions": {"hostProcess": true}}}}),
            vec![(
                "spec.securityContext.windowsOptions.hostProcess".into(),
                "host-process",
            )],
        ),
        (
            "init container checked like a container",
            json!({"spec": {"initContainers": [container(json!({
                "name": "init",
                "securityContext": {"privileged": true, "runAsNonRoot": false},
            }))]}}),
            vec![
                (
                    "spec.initContainers[0].securityContext.runAsNonRoot".into(),
                    "run-as-non-root",
                ),
                (
                    "spec.initContainers[0].securityContext.privileged".into(),
                    "privileged",
                ),
            ],
        ),
        (
            "ephemeral container checked like a container",
            json!({"spec": {"ephemeralContainers": [container(json!({
                "name": "debug",
                "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}},
            }))]}}),
            vec![(
                "spec.ephemeralContainers[0].securityContext.capabilities.add[0]".into(),
                "capabilities",
            )],
        ),
    ];
    let mut failures = Vec::new();
    for (name, patch, want) in cases {
        let got = found(&template(patch), &d);
        if got != want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The attack from issue 12: everything the default policy exists for, at once.
#[test]
fn attack_template_is_refused_on_every_count() {
    let attack = template(json!({"spec": {
        "serviceAccountName": "deployer",
        "hostPID": true,
        "securityContext": null,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{
            "name": "pwn",
            "image": "busybox",
            "command": ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "sh"],
            "securityContext": {"privileged": true},
            "volumeMounts": [{"name": "host", "mountPath": "/host"}],
        }],
    }}));
    let violations = check(&attack, &JobPolicy::default(), "shop-db");
    let rules: Vec<_> = violations.iter().map(|v| v.rule).collect();
    assert_eq!(
        rules,
        [
            "service-account",
            "host-namespace",
            "host-path",
            "run-as-non-root",
            "privileged",
            "privilege-escalation"
        ],
        "{violations:#?}"
    );
    let text = describe("spec.expand.job.template.", &violations);
    for part in [
        "spec.expand.job.template.spec.serviceAccountName: runs as ServiceAccount \"deployer\"",
        "spec.expand.job.template.spec.hostPID:",
        "spec.expand.job.template.spec.volumes[0].hostPath: volume \"host\" mounts the node's path \"/\"",
        "spec.expand.job.template.spec.containers[0].securityContext.privileged:",
        "[privileged]",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    // Turned off by the admin: nothing is checked.
    let off = JobPolicy {
        enabled: false,
        ..JobPolicy::default()
    };
    assert_eq!(check(&attack, &off, "shop-db"), vec![]);
}

#[test]
fn every_violation_message_says_how_to_fix() {
    let t = template(json!({"spec": {
        "serviceAccountName": "deployer",
        "automountServiceAccountToken": true,
        "hostNetwork": true,
        "nodeName": "n",
        "securityContext": {"runAsUser": 0, "sysctls": [{"name": "kernel.x", "value": "1"}]},
        "containers": [container(json!({"securityContext": {
            "allowPrivilegeEscalation": true, "procMount": "Unmasked",
            "capabilities": {"add": ["NET_ADMIN"]},
        }}))],
    }}));
    let violations = check(&t, &JobPolicy::default(), "shop-db");
    assert!(violations.len() >= 8, "{violations:#?}");
    for v in &violations {
        assert!(RULES.contains(&v.rule), "unknown rule {}", v.rule);
        let m = v.message.to_lowercase();
        assert!(
            ["remove", "set ", "use "].iter().any(|w| m.contains(w)),
            "no fix in: {v}"
        );
    }
}

#[test]
fn allow_lists() {
    let policy = JobPolicy {
        allowed_service_accounts: vec!["migrator".into()],
        allowed_capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
        allowed_images: vec!["registry.example.com/db/".into(), "postgres:".into()],
        ..JobPolicy::default()
    };
    let ok = template(json!({"spec": {
        "serviceAccountName": "migrator",
        "containers": [container(json!({"securityContext": {
            "capabilities": {"add": ["net_bind_service"]},
        }}))],
        "initContainers": [container(json!({
            "name": "wait", "image": "registry.example.com/db/wait:1",
        }))],
    }}));
    assert_eq!(found(&ok, &policy), vec![]);

    let bad = template(json!({"spec": {
        "serviceAccountName": "deployer",
        "containers": [container(json!({
            "image": "registry.example.com/dbx/evil:1",
            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "NET_RAW"]}},
        }))],
        "initContainers": [{"name": "noimage", "securityContext": {"allowPrivilegeEscalation": false}}],
    }}));
    assert_eq!(
        found(&bad, &policy),
        vec![
            ("spec.serviceAccountName".to_string(), "service-account"),
            ("spec.containers[0].image".into(), "image"),
            (
                "spec.containers[0].securityContext.capabilities.add[1]".into(),
                "capabilities"
            ),
            ("spec.initContainers[0].image".into(), "image"),
        ]
    );
    // With no image list, any image is fine (the default).
    let any = template(json!({"spec": {"containers": [container(json!({"image": "x/y:z"}))]}}));
    assert_eq!(found(&any, &JobPolicy::default()), vec![]);
}

#[test]
fn token_allowed_by_the_admin() {
    let policy = JobPolicy {
        allow_service_account_token: true,
        ..JobPolicy::default()
    };
    let t = template(json!({"spec": {
        "automountServiceAccountToken": true,
        "volumes": [{"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}],
    }}));
    assert_eq!(found(&t, &policy), vec![]);
    let mut enforced = t.clone();
    enforce(&mut enforced, &policy);
    let spec = enforced.spec.as_ref().expect("spec");
    assert_eq!(
        spec.automount_service_account_token,
        Some(true),
        "enforce leaves an allowed token alone"
    );
}

#[test]
fn the_grace_period_is_bounded() {
    let policy = JobPolicy::default();
    let long = template(json!({"spec": {"terminationGracePeriodSeconds": 600}}));
    let rules: Vec<&str> = crate::policy::check(&long, &policy, "shop-db")
        .iter()
        .map(|v| v.rule)
        .collect();
    assert!(rules.contains(&"termination-grace"), "{rules:?}");
    // A template that sets none gets the policy's bound; a shorter one keeps its own.
    for (set, want) in [(None, 30), (Some(10), 10)] {
        let mut t = template(json!({"spec": {}}));
        if let Some(spec) = t.spec.as_mut() {
            spec.termination_grace_period_seconds = set;
        }
        enforce(&mut t, &policy);
        let got = t.spec.and_then(|s| s.termination_grace_period_seconds);
        assert_eq!(got, Some(want));
    }
}

#[test]
fn enforce_turns_the_token_off() {
    for initial in [None, Some(true), Some(false)] {
        let mut t = template(json!({}));
        if let Some(spec) = t.spec.as_mut() {
            spec.automount_service_account_token = initial;
        }
        enforce(&mut t, &JobPolicy::default());
        assert_eq!(
            t.spec
                .as_ref()
                .and_then(|s| s.automount_service_account_token),
            Some(false),
            "from {initial:?}"
        );
    }
    // Without a spec there is nothing to run and nothing to change.
    let mut empty = PodTemplateSpec::default();
    enforce(&mut empty, &JobPolicy::default());
    assert_eq!(empty, PodTemplateSpec::default());
}

#[test]
fn policy_documents() {
    assert_eq!(
        JobPolicy::from_yaml("").expect("empty"),
        JobPolicy::default()
    );
    assert_eq!(
        JobPolicy::from_yaml("{}").expect("{}"),
        JobPolicy::default()
    );
    let yaml = "allowedServiceAccounts: [migrator]\nallowServiceAccountToken: true\n\
                allowedCapabilities: [NET_BIND_SERVICE]\nallowedImages: ['registry.example.com/']\n";
    let json = r#"{"allowedServiceAccounts": ["migrator"], "allowServiceAccountToken": true,
                   "allowedCapabilities": ["NET_BIND_SERVICE"],
                   "allowedImages": ["registry.example.com/"]}"#;
    let want = JobPolicy {
        enabled: true,
        allowed_service_accounts: vec!["migrator".into()],
        allow_service_account_token: true,
        allowed_capabilities: vec!["NET_BIND_SERVICE".into()],
        allowed_images: vec!["registry.example.com/".into()],
        show_job_output: false,
        allowed_priority_classes: Vec::new(),
        allowed_labels: Vec::new(),
        allowed_annotations: Vec::new(),
        allowed_secrets: Vec::new(),
        max_termination_grace_period_seconds: 30,
    };
    assert_eq!(JobPolicy::from_yaml(yaml).expect("yaml"), want);
    assert_eq!(JobPolicy::from_yaml(json).expect("json"), want);
    // Round trip in camelCase.
    let back = serde_json::to_value(&want).expect("serialize");
    assert_eq!(back["allowServiceAccountToken"], json!(true));
    assert_eq!(
        serde_json::from_value::<JobPolicy>(back).expect("back"),
        want
    );

    for (doc, needle) in [
        ("allowedServiceAcounts: [x]", "unknown field"),
        ("enabled: maybe", "enabled"),
        (
            "allowedServiceAccounts: [Deployer]",
            "allowedServiceAccounts",
        ),
        ("allowedServiceAccounts: ['']", "allowedServiceAccounts"),
        ("allowedCapabilities: ['CAP_']", "allowedCapabilities"),
        ("allowedCapabilities: ['NET BIND']", "allowedCapabilities"),
        ("allowedImages: ['']", "allowedImages"),
        ("allowedPriorityClasses: [High]", "allowedPriorityClasses"),
        ("allowedLabels: ['']", "allowedLabels"),
        ("allowedLabels: ['a*b']", "allowedLabels"),
        ("allowedAnnotations: ['a b']", "allowedAnnotations"),
        ("allowedSecrets: ['Other']", "allowedSecrets"),
    ] {
        let err = JobPolicy::from_yaml(doc).expect_err(doc).to_string();
        assert!(err.contains(needle), "{doc}: {err}");
    }
}

/// Examples that do not pass the default policy yet, with the reason. Remove an entry once the
/// example is fixed (the test fails while a listed example passes, so the list cannot go stale).
const EXAMPLES_TO_FIX: &[(&str, &str)] = &[];

/// The examples a user copies must pass the default policy.
#[test]
fn examples_pass_the_default_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("examples/") {
        let dir = entry.expect("entry").path();
        let to_fix = EXAMPLES_TO_FIX
            .iter()
            .find(|(name, _)| dir.file_name().is_some_and(|n| n == *name));
        let path = dir.join("migration.yaml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).expect("yaml");
            for phase in ["expand", "contract"] {
                let t = &v["spec"][phase]["job"]["template"];
                if t.is_null() {
                    continue;
                }
                let t: PodTemplateSpec = serde_json::from_value(t.clone()).expect("template");
                let secret = v["spec"]["database"]["urlSecretRef"]["name"]
                    .as_str()
                    .unwrap_or_default();
                let violations = check(&t, &JobPolicy::default(), secret);
                if let Some((name, why)) = to_fix {
                    assert!(
                        !violations.is_empty(),
                        "examples/{name} passes now: remove it from EXAMPLES_TO_FIX ({why})"
                    );
                    continue;
                }
                assert!(
                    violations.is_empty(),
                    "{} {phase}: {}",
                    path.display(),
                    describe("", &violations)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "no example job templates found");
}

/// Secrets a template references: the database Secret and the admin's list only (issue 23).
#[test]
fn secrets_beyond_the_database_secret_are_refused() {
    let c0 = "spec.containers[0]";
    let t = template(json!({"spec": {
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": [
            {"name": "own", "secret": {"secretName": "shop-db"}},
            {"name": "other", "secret": {"secretName": "payments-api-key"}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "payments-api-key"}}]}},
        ],
        "containers": [container(json!({
            "env": [
                {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "url"}}},
                {"name": "K", "valueFrom": {"secretKeyRef": {"name": "payments-api-key", "key": "k"}}},
            ],
            "envFrom": [{"secretRef": {"name": "payments-api-key"}}],
        }))],
    }}));
    assert_eq!(
        found(&t, &JobPolicy::default()),
        vec![
            (
                format!("{c0}.env[1].valueFrom.secretKeyRef"),
                "secret-references"
            ),
            (format!("{c0}.envFrom[0].secretRef"), "secret-references"),
            ("spec.volumes[1].secret".into(), "secret-references"),
            (
                "spec.volumes[2].projected.sources[0].secret".into(),
                "secret-references"
            ),
            ("spec.imagePullSecrets[0]".into(), "secret-references"),
        ]
    );
    let allowed = JobPolicy {
        allowed_secrets: vec!["payments-api-key".into(), "registry".into()],
        ..JobPolicy::default()
    };
    assert_eq!(found(&t, &allowed), vec![]);
    let any = JobPolicy {
        allowed_secrets: vec!["*".into()],
        ..JobPolicy::default()
    };
    assert_eq!(found(&t, &any), vec![]);
}
