//! The executor's environment: every `PHASEGATE_*` variable the operator sets on an executor
//! Job and `phasegate apply` / `phasegate backfill` read, as one type, [`ExecutorEnv`], that
//! the operator writes and the executor parses (tests/protocol.rs round-trips it). The commit
//! grant's names are in [`super::grant`].

pub const ADVISORY_LOCK_TIMEOUT: &str = "PHASEGATE_ADVISORY_LOCK_TIMEOUT";
pub const APPLICATION_NAMES: &str = "PHASEGATE_APPLICATION_NAMES";
pub const APP_VERSION: &str = "PHASEGATE_APP_VERSION";
pub const BACKFILL_BATCH_SIZE: &str = "PHASEGATE_BACKFILL_BATCH_SIZE";
pub const BACKFILL_EPOCH: &str = "PHASEGATE_BACKFILL_EPOCH";
pub const BACKFILL_KEY: &str = "PHASEGATE_BACKFILL_KEY";
pub const BACKFILL_LOCK_TIMEOUT: &str = "PHASEGATE_BACKFILL_LOCK_TIMEOUT";
pub const BACKFILL_MAX_BATCH_SIZE: &str = "PHASEGATE_BACKFILL_MAX_BATCH_SIZE";
pub const BACKFILL_MAX_LOCK_RETRIES: &str = "PHASEGATE_BACKFILL_MAX_LOCK_RETRIES";
pub const BACKFILL_MAX_REPLICATION_LAG: &str = "PHASEGATE_BACKFILL_MAX_REPLICATION_LAG";
pub const BACKFILL_PAUSE: &str = "PHASEGATE_BACKFILL_PAUSE";
pub const BACKFILL_SQL: &str = "PHASEGATE_BACKFILL_SQL";
pub const BACKFILL_STATEMENT_TIMEOUT: &str = "PHASEGATE_BACKFILL_STATEMENT_TIMEOUT";
pub const BACKFILL_TABLE: &str = "PHASEGATE_BACKFILL_TABLE";
pub const BACKFILL_TARGET_BATCH_DURATION: &str = "PHASEGATE_BACKFILL_TARGET_BATCH_DURATION";
pub const CONNECT_TIMEOUT: &str = "PHASEGATE_CONNECT_TIMEOUT";
pub const DATABASE_CHECK: &str = "PHASEGATE_DATABASE_CHECK";
pub const DATABASE_CHECK_TIMEOUT: &str = "PHASEGATE_DATABASE_CHECK_TIMEOUT";
pub const DATABASE_URL: &str = "PHASEGATE_DATABASE_URL";
pub const EXPAND_AFTER: &str = "PHASEGATE_EXPAND_AFTER";
pub const EXPAND_BATCH: &str = "PHASEGATE_EXPAND_BATCH";
pub const FAILPOINT: &str = "PHASEGATE_FAILPOINT";
pub const LOCK_TIMEOUT: &str = "PHASEGATE_LOCK_TIMEOUT";
pub const LOCK_WAIT_ATTEMPT_AFTER: &str = "PHASEGATE_LOCK_WAIT_ATTEMPT_AFTER";
pub const LOCK_WAIT_TIMEOUT: &str = "PHASEGATE_LOCK_WAIT_TIMEOUT";
pub const MAX_LOCK_RETRIES: &str = "PHASEGATE_MAX_LOCK_RETRIES";
pub const MIGRATION_NAME: &str = "PHASEGATE_MIGRATION_NAME";
pub const MIGRATION_NAMESPACE: &str = "PHASEGATE_MIGRATION_NAMESPACE";
pub const MIGRATION_UID: &str = "PHASEGATE_MIGRATION_UID";
pub const PHASE: &str = "PHASEGATE_PHASE";
pub const POOLER: &str = "PHASEGATE_POOLER";
pub const POOLER_ADMIN_URL: &str = "PHASEGATE_POOLER_ADMIN_URL";
pub const PREVIOUS_VERSIONS: &str = "PHASEGATE_PREVIOUS_VERSIONS";
pub const REPLICA_DISCOVER: &str = "PHASEGATE_REPLICA_DISCOVER";
/// `PHASEGATE_REPLICA_URL_<i>`: the URL of the i-th listed hot standby, from its Secret.
pub const REPLICA_URLS: [&str; crate::api::MAX_REPLICA_URLS] = [
    "PHASEGATE_REPLICA_URL_0",
    "PHASEGATE_REPLICA_URL_1",
    "PHASEGATE_REPLICA_URL_2",
    "PHASEGATE_REPLICA_URL_3",
    "PHASEGATE_REPLICA_URL_4",
    "PHASEGATE_REPLICA_URL_5",
    "PHASEGATE_REPLICA_URL_6",
    "PHASEGATE_REPLICA_URL_7",
    "PHASEGATE_REPLICA_URL_8",
    "PHASEGATE_REPLICA_URL_9",
    "PHASEGATE_REPLICA_URL_10",
    "PHASEGATE_REPLICA_URL_11",
    "PHASEGATE_REPLICA_URL_12",
    "PHASEGATE_REPLICA_URL_13",
    "PHASEGATE_REPLICA_URL_14",
    "PHASEGATE_REPLICA_URL_15",
];
pub const REQUIRE_EXPAND: &str = "PHASEGATE_REQUIRE_EXPAND";
pub const ROLLOUT_COMPLETED_AT: &str = "PHASEGATE_ROLLOUT_COMPLETED_AT";
/// `PHASEGATE_SERVER_URL_<i>`: the URL of `spec.tenants.servers[i]`, from its Secret (the
/// names are in `PHASEGATE_TENANTS`).
pub const SERVER_URLS: [&str; crate::api::MAX_TENANT_SERVERS] = [
    "PHASEGATE_SERVER_URL_0",
    "PHASEGATE_SERVER_URL_1",
    "PHASEGATE_SERVER_URL_2",
    "PHASEGATE_SERVER_URL_3",
    "PHASEGATE_SERVER_URL_4",
    "PHASEGATE_SERVER_URL_5",
    "PHASEGATE_SERVER_URL_6",
    "PHASEGATE_SERVER_URL_7",
    "PHASEGATE_SERVER_URL_8",
    "PHASEGATE_SERVER_URL_9",
    "PHASEGATE_SERVER_URL_10",
    "PHASEGATE_SERVER_URL_11",
    "PHASEGATE_SERVER_URL_12",
    "PHASEGATE_SERVER_URL_13",
    "PHASEGATE_SERVER_URL_14",
    "PHASEGATE_SERVER_URL_15",
    "PHASEGATE_SERVER_URL_16",
    "PHASEGATE_SERVER_URL_17",
    "PHASEGATE_SERVER_URL_18",
    "PHASEGATE_SERVER_URL_19",
    "PHASEGATE_SERVER_URL_20",
    "PHASEGATE_SERVER_URL_21",
    "PHASEGATE_SERVER_URL_22",
    "PHASEGATE_SERVER_URL_23",
    "PHASEGATE_SERVER_URL_24",
    "PHASEGATE_SERVER_URL_25",
    "PHASEGATE_SERVER_URL_26",
    "PHASEGATE_SERVER_URL_27",
    "PHASEGATE_SERVER_URL_28",
    "PHASEGATE_SERVER_URL_29",
    "PHASEGATE_SERVER_URL_30",
    "PHASEGATE_SERVER_URL_31",
];
pub const SQL: &str = "PHASEGATE_SQL";
pub const STATEMENT_TIMEOUT: &str = "PHASEGATE_STATEMENT_TIMEOUT";
pub const TENANTS: &str = "PHASEGATE_TENANTS";
pub const TENANT_EXPAND_SQL: &str = "PHASEGATE_TENANT_EXPAND_SQL";
pub const TERMINATION_LOG: &str = "PHASEGATE_TERMINATION_LOG";
pub const VERSION_ORDER: &str = "PHASEGATE_VERSION_ORDER";
pub const YOUNG_TRANSACTION: &str = "PHASEGATE_YOUNG_TRANSACTION";

/// Where a variable's value comes from in the Job: written in, or a key of a Secret (the
/// operator never reads the Secret; the kubelet resolves it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Plain(String),
    Secret(SecretKey),
}

/// A key of a Secret in the migration's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

/// One variable of the environment, in the order the operator writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    pub value: Value,
}

/// A string that never shows in `Debug` output (the database URL holds the password).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// How the database URL appears on each side: a [`SecretKey`] in the Job the operator
/// builds, the URL itself ([`Secret`]) in the environment the executor reads.
pub trait UrlSource {
    fn value(&self) -> Value;
}

impl UrlSource for SecretKey {
    fn value(&self) -> Value {
        Value::Secret(self.clone())
    }
}

impl UrlSource for Secret {
    fn value(&self) -> Value {
        Value::Plain(self.0.clone())
    }
}

/// A variable whose text does not parse as its type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value {value:?} of {name}: {reason}")]
pub struct EnvError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// The text form of a value in the environment. Durations stay text (the executor reads
/// them with [`parse_duration`]), as do the contract-only settings that the executor
/// validates only for contract (expand ignores them, even invalid).
pub trait EnvText: Sized {
    fn to_text(&self) -> String;
    fn from_text(s: &str) -> Result<Self, String>;
}

impl EnvText for String {
    fn to_text(&self) -> String {
        self.clone()
    }
    fn from_text(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
}

impl EnvText for u32 {
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("{e}"))
    }
}

impl EnvText for i64 {
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("{e}"))
    }
}

/// A comma-separated list; blanks around items and empty items are dropped.
impl EnvText for Vec<String> {
    fn to_text(&self) -> String {
        self.join(",")
    }
    fn from_text(s: &str) -> Result<Self, String> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// `spec.tenants` as JSON.
impl EnvText for crate::api::TenantsSpec {
    fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    fn from_text(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map_err(|e| format!("not a tenants spec: {e}"))
    }
}

impl EnvText for Vec<super::batch::BatchMember> {
    fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    fn from_text(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map_err(|e| format!("not a list of batch members: {e}"))
    }
}

/// A duration setting: a bare number is milliseconds (PostgreSQL's convention for its
/// timeouts), anything else a humantime duration such as `2s` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_millis(ms));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `true`/`false` (and the usual spellings) of a boolean setting; None when unset or empty.
pub fn parse_bool(name: &str, value: Option<&str>) -> Result<Option<bool>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!("{name} must be true or false, not {v:?}")),
        },
    }
}

/// The boolean text the operator writes.
pub fn bool_text(b: bool) -> String {
    if b { "true" } else { "false" }.to_string()
}

/// Declares [`ExecutorEnv`]'s fields once, each with its variable: the struct, the order
/// the operator writes them in, and the executor's parse all follow from this table.
macro_rules! executor_env {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $name:expr,)*) => {
        /// The executor's environment, one field per variable (`None`: not set). The
        /// operator builds one per Job and writes it with [`ExecutorEnv::to_env`]; `phasegate
        /// apply` and `phasegate backfill` read theirs with [`ExecutorEnv::parse`] (their flags,
        /// for use by hand, win over it). `U` is how the database URL appears: a
        /// [`SecretKey`] in the Job, the URL ([`Secret`]) in the executor.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct ExecutorEnv<U = SecretKey> {
            /// `PHASEGATE_DATABASE_URL`, always from a Secret in a Job.
            pub database_url: Option<U>,
            /// Contract only: `PHASEGATE_REPLICA_URL_0`, `_1`, …: the listed hot standbys,
            /// each from a Secret in a Job (at most 16; the first unset name ends the list).
            pub replica_urls: Vec<U>,
            /// `PHASEGATE_SERVER_URL_0`, `_1`, …: the servers of `spec.tenants.servers`, in
            /// their order, each from a Secret in a Job (at most 32; the first unset name ends
            /// the list).
            pub server_urls: Vec<U>,
            /// `PHASEGATE_POOLER_ADMIN_URL` (contract only), from a Secret in a Job
            /// (`spec.database.pooler.adminUrlSecretRef`).
            pub pooler_admin_url: Option<U>,
            $($(#[$doc])* pub $field: Option<$ty>,)*
        }

        impl<U: UrlSource> ExecutorEnv<U> {
            /// The variables that are set, in the order the operator writes them.
            pub fn to_env(&self) -> Vec<Var> {
                let mut vars = Vec::new();
                if let Some(u) = &self.database_url {
                    vars.push(Var { name: DATABASE_URL, value: u.value() });
                }
                for (name, u) in REPLICA_URLS.iter().zip(&self.replica_urls) {
                    vars.push(Var { name, value: u.value() });
                }
                for (name, u) in SERVER_URLS.iter().zip(&self.server_urls) {
                    vars.push(Var { name, value: u.value() });
                }
                $(if let Some(v) = &self.$field {
                    vars.push(Var { name: $name, value: Value::Plain(EnvText::to_text(v)) });
                })*
                if let Some(u) = &self.pooler_admin_url {
                    vars.push(Var { name: POOLER_ADMIN_URL, value: u.value() });
                }
                vars
            }

            /// Every variable name this type knows, the database URL's first.
            pub fn names() -> Vec<&'static str> {
                let mut names = vec![DATABASE_URL];
                names.extend(REPLICA_URLS);
                names.extend(SERVER_URLS);
                names.extend([$($name,)* POOLER_ADMIN_URL]);
                names
            }

            /// The same environment with the Secret-backed URLs resolved (or replaced): the
            /// database's and the pooler admin console's; no standby or server URLs (see
            /// [`ExecutorEnv::with_replica_urls`] and [`ExecutorEnv::with_server_urls`]).
            pub fn with_urls<V>(self, url: Option<V>, pooler_admin_url: Option<V>) -> ExecutorEnv<V> {
                ExecutorEnv {
                    database_url: url,
                    replica_urls: Vec::new(),
                    server_urls: Vec::new(),
                    pooler_admin_url,
                    $($field: self.$field,)*
                }
            }

            /// The same environment with these standby URLs.
            pub fn with_replica_urls(mut self, replica_urls: Vec<U>) -> Self {
                self.replica_urls = replica_urls;
                self
            }

            /// The same environment with these servers' URLs (`spec.tenants.servers`).
            pub fn with_server_urls(mut self, server_urls: Vec<U>) -> Self {
                self.server_urls = server_urls;
                self
            }
        }

        impl ExecutorEnv<Secret> {
            /// The environment as the executor sees it, through `lookup` (the process
            /// environment in `phasegate apply`). An empty value is a value, as with clap.
            pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
                Ok(ExecutorEnv {
                    database_url: lookup(DATABASE_URL).map(Secret),
                    replica_urls: REPLICA_URLS
                        .iter()
                        .map_while(|name| lookup(name).map(Secret))
                        .collect(),
                    server_urls: SERVER_URLS
                        .iter()
                        .map_while(|name| lookup(name).map(Secret))
                        .collect(),
                    pooler_admin_url: lookup(POOLER_ADMIN_URL).map(Secret),
                    $($field: match lookup($name) {
                        None => None,
                        Some(value) => Some(<$ty as EnvText>::from_text(&value).map_err(
                            |reason| EnvError { name: $name, value, reason },
                        )?),
                    },)*
                })
            }

            /// [`ExecutorEnv::parse`] of this process's environment.
            pub fn from_process() -> Result<Self, EnvError> {
                Self::parse(|name| std::env::var(name).ok())
            }
        }
    };
}

executor_env! {
    /// `expand` or `contract` (`phasegate apply` only).
    phase: String = PHASE,
    migration_namespace: String = MIGRATION_NAMESPACE,
    migration_name: String = MIGRATION_NAME,
    migration_uid: String = MIGRATION_UID,
    app_version: String = APP_VERSION,
    /// The Job's attempt number, for the commit grant.
    attempt: u32 = super::grant::ENV_ATTEMPT,
    lock_timeout: String = LOCK_TIMEOUT,
    statement_timeout: String = STATEMENT_TIMEOUT,
    young_transaction: String = YOUNG_TRANSACTION,
    lock_wait_attempt_after: String = LOCK_WAIT_ATTEMPT_AFTER,
    max_lock_retries: u32 = MAX_LOCK_RETRIES,
    /// Contract only, validated by the executor for contract alone: `true`/`false`.
    database_check: String = DATABASE_CHECK,
    /// Contract only: RFC 3339.
    rollout_completed_at: String = ROLLOUT_COMPLETED_AT,
    application_names: Vec<String> = APPLICATION_NAMES,
    /// Contract only: `SemVer`, `Exact` or `NotPrevious`.
    version_order: String = VERSION_ORDER,
    previous_versions: Vec<String> = PREVIOUS_VERSIONS,
    /// Contract only: `true`/`false`.
    require_expand: String = REQUIRE_EXPAND,
    /// Contract only: `true`/`false`: also check the standbys in `pg_stat_replication`.
    replica_discover: String = REPLICA_DISCOVER,
    /// Contract only, `true`/`false`: PgBouncer in front of the database; the database check
    /// reads its clients too (`spec.database.pooler`).
    pooler: String = POOLER,
    backfill_table: String = BACKFILL_TABLE,
    backfill_key: String = BACKFILL_KEY,
    backfill_sql: String = BACKFILL_SQL,
    backfill_statement_timeout: String = BACKFILL_STATEMENT_TIMEOUT,
    /// The rollout epoch: another one restarts the backfill's scan.
    backfill_epoch: String = BACKFILL_EPOCH,
    backfill_batch_size: i64 = BACKFILL_BATCH_SIZE,
    backfill_max_batch_size: i64 = BACKFILL_MAX_BATCH_SIZE,
    backfill_target_batch_duration: String = BACKFILL_TARGET_BATCH_DURATION,
    backfill_pause: String = BACKFILL_PAUSE,
    backfill_lock_timeout: String = BACKFILL_LOCK_TIMEOUT,
    backfill_max_replication_lag: String = BACKFILL_MAX_REPLICATION_LAG,
    /// Expand only: earlier migrations of this namespace and database whose expand the ledger
    /// must record as applied before this one runs.
    expand_after: Vec<String> = EXPAND_AFTER,
    /// Expand only: later migrations of the same database applied after this one, in order
    /// (see [`super::batch`]).
    expand_batch: Vec<super::batch::BatchMember> = EXPAND_BATCH,
    /// `spec.tenants`: run the phase on every tenant it selects.
    tenants: crate::api::TenantsSpec = TENANTS,
    /// Contract with tenants: expand's SQL, for tenants created since expand ran.
    tenant_expand_sql: String = TENANT_EXPAND_SQL,
    /// The phase's SQL, for Phasegate's own executor (inline `sql`).
    sql: String = SQL,
    /// Contract of inline `sql`: the operator's commit-grant endpoint.
    grant_url: String = super::grant::ENV_URL,
    // Set by hand only (the operator leaves them to their defaults):
    lock_wait_timeout: String = LOCK_WAIT_TIMEOUT,
    advisory_lock_timeout: String = ADVISORY_LOCK_TIMEOUT,
    connect_timeout: String = CONNECT_TIMEOUT,
    termination_log: String = TERMINATION_LOG,
    failpoint: String = FAILPOINT,
    database_check_timeout: String = DATABASE_CHECK_TIMEOUT,
    grant_wait: String = super::grant::ENV_WAIT,
    backfill_max_lock_retries: u32 = BACKFILL_MAX_LOCK_RETRIES,
}

impl<U> ExecutorEnv<U> {
    /// Without the variables of `phasegate apply` (and of users' own Jobs) that `phasegate
    /// backfill` does not read: a backfill Job's environment leaves them unset.
    pub fn without_apply_only(mut self) -> Self {
        self.phase = None;
        self.app_version = None;
        self.attempt = None;
        self.lock_timeout = None;
        self.statement_timeout = None;
        self.young_transaction = None;
        self.lock_wait_attempt_after = None;
        self.max_lock_retries = None;
        self
    }
}
