//! `spec.database.replicas`: hot standbys whose sessions contract's database check judges too.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Most standby URLs a migration may list (each becomes one environment variable of the
/// contract Job).
pub const MAX_REPLICA_URLS: usize = 16;

/// Hot standbys (streaming replicas) the application reads from. Old code connected to a
/// standby reads the columns contract drops, yet never shows in the primary's
/// `pg_stat_activity` (see `DatabaseSpec::replicas` for what the CRD says).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicasSpec {
    /// Keys of Secrets in the migration's namespace, each holding the PostgreSQL URL of one
    /// hot standby (same form as `urlSecretRef`; the same database name). Only the contract
    /// executor reads them; the operator never does. Their contents may change; the list may
    /// not (`database` is immutable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub url_secret_refs: Vec<SecretKeyRef>,
    /// Also find standbys in the primary's `pg_stat_replication` (physical standbys that
    /// replay WAL: not logical replication, `pg_basebackup` or `pg_receivewal`) and check each
    /// at its `client_addr`, with the user, password, database, port and TLS settings of the
    /// primary's URL. The migration role needs `pg_read_all_stats` to see the addresses.
    /// A discovered standby that cannot be reached holds contract.
    #[serde(default)]
    pub discover: bool,
}
