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
