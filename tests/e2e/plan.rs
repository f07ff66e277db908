//! `phasegate plan --kubeconfig`: the workloads that will gate contract, read from the cluster.

use crate::harness::Env;
use crate::postgres;

#[tokio::test(flavor = "multi_thread")]
async fn plan_lists_the_workloads_that_gate_contract() {
    let env = Env::new("plan").await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = dir.path().join("migration.yaml");
    std::fs::write(
        &yaml,
        format!(
            r#"apiVersion: phasegate.dev/v1alpha1
kind: DatabaseMigration
metadata: {{name: m, namespace: {ns}}}
spec:
  appVersion: "2.0.0"
  database: {{urlSecretRef: {{name: shop-db, key: url}}}}
  expand: {{sql: "CREATE TABLE t (id int);"}}
  contract: {{sql: "DROP TABLE t;"}}
  rollout:
    targets:
      - {{kind: Deployment, name: shop-api}}
      - {{kind: StatefulSet, selector: {{matchLabels: {{app: nothing-matches}}}}}}
"#,
            ns = env.ns
        ),
    )
    .expect("write migration");
    let bindir = postgres::bindir().expect("PostgreSQL binaries");
    let (_, out, err) = env
        .phasegate_cli(
            &[
                "plan",
                "--pg-bindir",
                &bindir.display().to_string(),
                "--kubeconfig",
                &env.kubeconfig().display().to_string(),
                &yaml.display().to_string(),
            ],
            None,
        )
        .await;
    assert!(out.contains("#### Contract is gated by"), "{out}{err}");
    let ns = &env.ns;
    assert!(
        out.contains(&format!("- Deployment `shop-api` in `{ns}`: contract waits until these run 2.0.0 (or newer) with no older pod left (now: `shop-api` runs 1.0.0)")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "- StatefulSet `selector app=nothing-matches` in `{ns}`: not found"
        )),
        "{out}"
    );
    env.cleanup().await;
}
