//! The checked-in CRD must be exactly what the code generates.

use kube::CustomResourceExt;

const CRD_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/databasemigrations.phasegate.dev.yaml"
);

#[test]
fn checked_in_crd_matches_the_code() {
    let generated =
        serde_yaml::to_string(&phasegate::api::DatabaseMigration::crd()).expect("CRD renders");
    let on_disk = std::fs::read_to_string(CRD_PATH)
        .expect("crds/databasemigrations.phasegate.dev.yaml exists");
    assert!(
        generated == on_disk,
        "crds/databasemigrations.phasegate.dev.yaml is stale: run `make crd`"
    );
}

#[test]
fn crd_declares_immutability_and_one_of_rules() {
    let yaml = std::fs::read_to_string(CRD_PATH).expect("CRD file");
    for rule in [
        "appVersion is immutable",
        "expand is immutable",
        "database is immutable",
        "exactly one of sql or job must be set",
        "a target needs exactly one of name or selector",
    ] {
        assert!(yaml.contains(rule), "CRD lacks the rule {rule:?}");
    }
}

#[test]
fn wide_output_shows_why_and_explain_says_what_it_is() {
    let crd = phasegate::api::DatabaseMigration::crd();
    let version = &crd.spec.versions[0];
    let wide: Vec<(String, String)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority == Some(1))
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect();
    assert_eq!(
        wide,
        vec![
            (
                "Reason".to_string(),
                ".status.conditions[?(@.type==\"Ready\")].reason".to_string()
            ),
            (
                "Message".to_string(),
                ".status.conditions[?(@.type==\"Ready\")].message".to_string()
            ),
        ]
    );
    let description = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.description.clone())
        .unwrap_or_default();
    assert!(
        description.contains("expand/contract") && !description.contains("Auto-generated"),
        "{description}"
    );
}

/// Every SQL field an author writes is bounded (issue 23): the operator caches every
/// migration, so unbounded fields let one author exhaust its memory.
#[test]
fn every_sql_field_is_bounded() {
    let crd = phasegate::api::DatabaseMigration::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for (field, max) in [
        ("expand", 131_072),
        ("contract", 131_072),
        ("backfill", 65_536),
    ] {
        let sql = &spec[field]["properties"]["sql"];
        assert_eq!(sql["maxLength"], max, "spec.{field}.sql: {sql}");
    }
    for field in ["expand", "contract"] {
        let rules = spec[field]["properties"]["sql"]["x-kubernetes-validations"].to_string();
        assert!(
            rules.contains("size(bytes(self)) <= 131057"),
            "spec.{field}.sql has no byte bound: {rules}"
        );
    }
}
