//! A throwaway PgBouncer in front of a [`TestPostgres`]: its ini and userlist (the test role,
//! SCRAM to clients and to the server) in a temporary directory, listening on a free port on
//! 127.0.0.1, in session or transaction pooling; stopped on drop.
//!
//! Binary: `PHASEGATE_PGBOUNCER`, else `pgbouncer` on PATH, else `/usr/sbin/pgbouncer` (Debian's
//! `pgbouncer` package, which hack/install-deps.sh installs). PgBouncer refuses to run as root:
//! then it switches to the user the PostgreSQL support runs the server as (`-u`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::{TestPostgres, PASSWORD, USER};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

impl PoolMode {
    fn as_ini(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// What a test PgBouncer is set up with beyond its pool: the admin console's users and
/// `application_name_add_host`.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: PoolMode,
    pub pool_size: u32,
    /// `admin_users`; the test role by default.
    pub admin_users: Vec<String>,
    /// `stats_users`.
    pub stats_users: Vec<String>,
    /// More users of the auth file (name, password), e.g. a stats user with no PostgreSQL role.
    pub extra_users: Vec<(String, String)>,
    /// `application_name_add_host = 1`: PgBouncer appends ` - <client host>:<port>`.
    pub application_name_add_host: bool,
    /// More `[pgbouncer]` settings, one per line.
    pub extra: String,
}

impl Options {
    pub fn new(mode: PoolMode, pool_size: u32) -> Options {
        Options {
            mode,
            pool_size,
            admin_users: vec![USER.to_string()],
            stats_users: Vec::new(),
            extra_users: Vec::new(),
            application_name_add_host: false,
            extra: String::new(),
        }
    }
}

pub struct TestPgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl TestPgBouncer {
    /// Starts PgBouncer in front of `pg`, with a server pool of `pool_size` connections per
    /// database and user (small, so that clients share server connections); panics with its log
    /// if that fails.
    pub fn start(pg: &TestPostgres, mode: PoolMode, pool_size: u32) -> TestPgBouncer {
        match TestPgBouncer::try_start(pg, mode, pool_size) {
            Ok(b) => b,
            Err(e) => panic!("cannot start a test PgBouncer: {e}"),
        }
    }

    pub fn try_start(
        pg: &TestPostgres,
        mode: PoolMode,
        pool_size: u32,
    ) -> Result<TestPgBouncer, String> {
        TestPgBouncer::try_start_with(pg, &Options::new(mode, pool_size))
    }

    /// As [`TestPgBouncer::start`], with `server_round_robin = 1`: each transaction takes the
    /// server connection idle the longest, so a client's consecutive transactions run on
    /// different server connections even when it is alone (by default PgBouncer reuses the
    /// last one, which hides state a client wrongly expects to find again).
    pub fn start_round_robin(pg: &TestPostgres, mode: PoolMode, pool_size: u32) -> TestPgBouncer {
        let opts = Options {
            extra: "server_round_robin = 1\n".into(),
            ..Options::new(mode, pool_size)
        };
        match TestPgBouncer::try_start_with(pg, &opts) {
            Ok(b) => b,
            Err(e) => panic!("cannot start a test PgBouncer: {e}"),
        }
    }

    /// Starts PgBouncer in front of `pg` as `opts` say; panics with its log if that fails.
    pub fn start_with(pg: &TestPostgres, opts: &Options) -> TestPgBouncer {
        match TestPgBouncer::try_start_with(pg, opts) {
            Ok(b) => b,
            Err(e) => panic!("cannot start a test PgBouncer: {e}"),
        }
    }

    pub fn try_start_with(pg: &TestPostgres, opts: &Options) -> Result<TestPgBouncer, String> {
        let bin = binary()?;
        let run_as = super::postgres::run_as_user();
        let dir = tempfile::Builder::new()
            .prefix("phasegate-pgbouncer-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut last_err = String::new();
        // A free port can be taken by someone else before PgBouncer binds it: retry.
        for _ in 0..5 {
            let port = super::postgres::free_port()?;
            write_config(&dir, pg.port(), port, opts)?;
            if let Some(user) = &run_as {
                let out = Command::new("chown")
                    .arg("-R")
                    .arg(format!("{user}:"))
                    .arg(dir.path())
                    .output()
                    .map_err(|e| format!("chown: {e}"))?;
                if !out.status.success() {
                    return Err(format!("chown: {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
            let mut cmd = Command::new(&bin);
            if let Some(user) = &run_as {
                cmd.arg("-u").arg(user);
            }
            cmd.arg(dir.path().join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().map_err(|e| format!("{bin:?}: {e}"))?;
            match wait_listening(port, &mut child) {
                Ok(()) => return Ok(TestPgBouncer { dir, port, child }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("pgbouncer.log"))
                        .unwrap_or_default();
                    last_err = format!("{e}\n--- pgbouncer log ---\n{log}");
                }
            }
        }
        Err(last_err)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/postgres`, through the pooler.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// The admin console's URL for `user` (database `pgbouncer`).
    pub fn admin_url(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/pgbouncer?sslmode=disable",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// A client through the pooler (the connection task runs on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect through PgBouncer: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for TestPgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Advisory locks held on the server (`direct` connects to it, not through the pooler).
pub async fn advisory_locks(direct: &tokio_postgres::Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

impl TestPgBouncer {
    /// Two application transactions at once through the pooler, each on a server connection of
    /// its own when the pool has two (the executor's, after a run), see the server's defaults:
    /// the executor's settings did not stay on them. The clients are gone afterwards (in
    /// session pooling they would keep both server connections).
    pub async fn assert_no_settings_left(&self) {
        let (mut a, mut b) = (self.client().await, self.client().await);
        let (ta, tb) = (
            a.transaction().await.expect("begin"),
            b.transaction().await.expect("begin"),
        );
        for app in [&ta, &tb] {
            let leaked = changed_settings(app).await;
            assert_eq!(leaked, None, "settings leaked to the next client");
        }
    }
}

/// The executors' settings that differ from the server's defaults in the transaction of `app`
/// (comma-separated), if any.
async fn changed_settings(app: &tokio_postgres::Transaction<'_>) -> Option<String> {
    let rows = app
        .simple_query(
            "SELECT string_agg(name, ',') FROM pg_settings
              WHERE setting IS DISTINCT FROM reset_val
                AND name IN ('lock_timeout', 'statement_timeout',
                             'idle_in_transaction_session_timeout',
                             'client_connection_check_interval', 'search_path')",
        )
        .await
        .expect("settings");
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

fn write_config(
    dir: &tempfile::TempDir,
    server_port: u16,
    port: u16,
    opts: &Options,
) -> Result<(), String> {
    let d = dir.path();
    let (mode, pool_size) = (opts.mode, opts.pool_size);
    let ini = format!(
        "[databases]\n\
         * = host=127.0.0.1 port={server_port}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {userlist}\n\
         admin_users = {admin}\n\
         stats_users = {stats}\n\
         application_name_add_host = {add_host}\n\
         pool_mode = {mode}\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 200\n\
         server_lifetime = 3600\n\
         ignore_startup_parameters = extra_float_digits\n\
         logfile = {log}\n\
         pidfile = {pid}\n\
         {extra}",
        extra = opts.extra,
        userlist = d.join("userlist.txt").display(),
        mode = mode.as_ini(),
        admin = opts.admin_users.join(","),
        stats = opts.stats_users.join(","),
        add_host = u8::from(opts.application_name_add_host),
        log = d.join("pgbouncer.log").display(),
        pid = d.join("pgbouncer.pid").display(),
    );
    std::fs::write(d.join("pgbouncer.ini"), ini).map_err(|e| format!("write ini: {e}"))?;
    // A plain-text password lets PgBouncer answer SCRAM on both sides.
    let mut users = format!("\"{USER}\" \"{PASSWORD}\"\n");
    for (user, password) in &opts.extra_users {
        users.push_str(&format!("\"{user}\" \"{password}\"\n"));
    }
    std::fs::write(d.join("userlist.txt"), users).map_err(|e| format!("write userlist: {e}"))
}

fn wait_listening(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("pgbouncer exited: {status}"));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "pgbouncer did not listen on port {port} within 20 s"
    ))
}

fn binary() -> Result<PathBuf, String> {
    if let Ok(b) = std::env::var("PHASEGATE_PGBOUNCER") {
        if !b.is_empty() {
            return Ok(PathBuf::from(b));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pgbouncer").exists() {
                return Ok(dir.join("pgbouncer"));
            }
        }
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.exists() {
        return Ok(debian);
    }
    Err("no pgbouncer binary: run hack/install-deps.sh (Debian package pgbouncer) or set PHASEGATE_PGBOUNCER".into())
}
