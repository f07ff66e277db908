//! Throwaway PostgreSQL servers for tests: `initdb` in a temporary directory (once per test
//! binary, then copied), started with `pg_ctl` on a free port on 127.0.0.1 with password
//! (scram-sha-256) authentication, stopped and deleted on drop.
//!
//! Binaries: `PHASEGATE_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`, else
//! `pg_config --bindir`, else `PATH`. When run as root (CI), the server runs as the `postgres`
//! user (or `nobody`), because PostgreSQL refuses to run as root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Superuser created by `initdb`.
pub const USER: &str = "phasegate_test";
/// Distinctive, so tests can assert it never leaks into output.
pub const PASSWORD: &str = "pw-Zq7-test-s3cret";

pub struct TestPostgres {
    dir: tempfile::TempDir,
    /// The address it listens on (127.0.0.1 unless started with [`Self::start_at`]).
    host: String,
    port: u16,
    bindir: PathBuf,
    run_as: Option<String>,
    tls: bool,
}

impl TestPostgres {
    /// Starts a fresh server; panics with the server log if that fails.
    pub fn start() -> TestPostgres {
        match TestPostgres::try_start() {
            Ok(pg) => pg,
            Err(e) => panic!("cannot start a test PostgreSQL server: {e}"),
        }
    }

    pub fn try_start() -> Result<TestPostgres, String> {
        TestPostgres::try_start_with(false)
    }

    /// Starts a server with TLS on (`ssl=on`), certificates from a throwaway CA made with the
    /// `openssl` CLI: server certificate for `localhost` and `127.0.0.1`; see [`Self::ca_cert`].
    pub fn start_with_tls() -> TestPostgres {
        match TestPostgres::try_start_with(true) {
            Ok(pg) => pg,
            Err(e) => panic!("cannot start a TLS test PostgreSQL server: {e}"),
        }
    }

    /// PEM file of the CA that signed the server certificate (TLS servers only).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A URL with arbitrary host and query, e.g. `("localhost", "sslmode=verify-full")`.
    pub fn url_with(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@{host}:{}/postgres?{query}",
            self.port
        )
    }

    fn try_start_with(tls: bool) -> Result<TestPostgres, String> {
        TestPostgres::try_start_full(tls, "127.0.0.1", None)
    }

    /// Starts a fresh server listening on `host` (another loopback address such as
    /// 127.0.0.2 works: Linux routes all of 127.0.0.0/8 to `lo`), on `port` or a free one.
    pub fn start_at(host: &str, port: Option<u16>) -> TestPostgres {
        TestPostgres::try_start_full(false, host, port)
            .unwrap_or_else(|e| panic!("cannot start a test PostgreSQL server on {host}: {e}"))
    }

    fn try_start_full(tls: bool, host: &str, port: Option<u16>) -> Result<TestPostgres, String> {
        let bindir = bindir()?;
        let run_as = run_as_user();
        let template = template(&bindir, run_as.as_deref())?;
        let dir = new_dir()?;
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data))?;
        if tls {
            make_certs(dir.path())?;
        }
        chown(&dir, run_as.as_deref())?;
        TestPostgres::launch(dir, host, port, bindir, run_as, tls)
    }

    /// A hot standby of `primary` (streaming replication, with the primary's superuser),
    /// started on `host` and `port` (or a free one). Made with `pg_basebackup -R`; where the
    /// binaries have no `pg_basebackup` (hack/install-postgres17.sh's package ships only
    /// initdb, pg_ctl and postgres, and a pg_basebackup of another major version refuses the
    /// server), from a cold copy of the primary's data directory (stopped for it) with what
    /// `-R` writes: `standby.signal` and `primary_conninfo`.
    pub fn standby_of(primary: &TestPostgres, host: &str, port: Option<u16>) -> TestPostgres {
        let made = (|| {
            let dir = new_dir()?;
            chown(&dir, primary.run_as.as_deref())?;
            let conninfo = format!(
                "host={} port={} user={USER} password={PASSWORD}",
                primary.host, primary.port
            );
            let data = dir.path().join("data");
            if primary.bindir.join("pg_basebackup").exists() {
                run(primary
                    .command("pg_basebackup")
                    .arg("-d")
                    .arg(conninfo)
                    .arg("-D")
                    .arg(&data)
                    .arg("-R")
                    // An immediate checkpoint: the default spread one made each standby
                    // take seconds.
                    .arg("-c")
                    .arg("fast")
                    .arg("-X")
                    .arg("stream"))?;
            } else {
                primary.cold_copy(&data, &conninfo)?;
            }
            let bindir = primary.bindir.clone();
            TestPostgres::launch(dir, host, port, bindir, primary.run_as.clone(), false)
        })();
        made.unwrap_or_else(|e| panic!("cannot start a standby: {e}\n{}", primary.log()))
    }

    /// Stops the server, copies its data directory to `to` as a standby's, starts it again.
    fn cold_copy(&self, to: &Path, conninfo: &str) -> Result<(), String> {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut stop)?;
        let mut cp = command_as(self.run_as.as_deref(), Path::new("cp"));
        let copied = run(cp.arg("-a").arg(self.data_dir()).arg(to));
        let started = pg_ctl_start(
            self.dir.path(),
            &self.host,
            self.port,
            &self.bindir,
            self.run_as.as_deref(),
            self.tls,
        );
        copied?;
        started?;
        let auto = to.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
        conf.push_str(&format!("primary_conninfo = '{conninfo}'\n"));
        std::fs::write(&auto, conf).map_err(|e| format!("write {}: {e}", auto.display()))?;
        std::fs::write(to.join("standby.signal"), "").map_err(|e| format!("standby.signal: {e}"))
    }

    fn launch(
        dir: tempfile::TempDir,
        host: &str,
        port: Option<u16>,
        bindir: PathBuf,
        run_as: Option<String>,
        tls: bool,
    ) -> Result<TestPostgres, String> {
        let mut last_err = String::new();
        // A free port can be taken by someone else before the server binds it: retry.
        for _ in 0..5 {
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            match pg_ctl_start(dir.path(), host, port, &bindir, run_as.as_deref(), tls) {
                Ok(()) => {
                    return Ok(TestPostgres {
                        dir,
                        host: host.to_string(),
                        port,
                        bindir,
                        run_as,
                        tls,
                    })
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Waits (up to 30 s) until this standby has replayed everything `primary` wrote so far:
    /// a WAL record written now, whose end `pg_logical_emit_message` returns. Not the current
    /// insert or write position: with `synchronous_commit=off` a commit may not be written yet,
    /// and right after a page or segment boundary the insert position lies past the page
    /// header, which replay reaches only with the next record (up to 15 s on an idle server).
    pub async fn wait_replayed(&self, primary: &TestPostgres) {
        let p = primary.client().await;
        let s = self.client().await;
        let lsn: String = p
            .query_one(
                "SELECT pg_logical_emit_message(false, 'phasegate-test', 'replayed?')::text",
                &[],
            )
            .await
            .expect("primary LSN")
            .get(0);
        for _ in 0..300 {
            let done: Option<bool> = s
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .await
                .expect("standby LSN")
                .get(0);
            if done == Some(true) {
                return;
            }
            sleep_ms(100).await;
        }
        panic!(
            "the standby did not replay {lsn} within 30 s:\n{}",
            self.log()
        );
    }

    fn command(&self, tool: &str) -> Command {
        command_as(self.run_as.as_deref(), &self.bindir.join(tool))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        self.url_with_password(PASSWORD)
    }

    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgres://{USER}:{password}@{}:{}/postgres?sslmode=disable",
            self.host, self.port
        )
    }

    pub fn url_for_db(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@{}:{}/{db}?sslmode=disable",
            self.host, self.port
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A connected client (the connection task runs on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.client_for_url(&self.url()).await
    }

    /// A connected client of another database of the server.
    #[allow(dead_code)]
    pub async fn client_for_db(&self, db: &str) -> tokio_postgres::Client {
        self.client_for_url(&self.url_for_db(db)).await
    }

    /// Tenant databases `dbs`, each with a table `users (id int, legacy text)`.
    #[allow(dead_code)]
    pub async fn create_tenant_databases(&self, dbs: &[&str]) {
        let c = self.client().await;
        for db in dbs {
            c.batch_execute(&format!("CREATE DATABASE {db}"))
                .await
                .expect("db");
            self.client_for_db(db)
                .await
                .batch_execute("CREATE TABLE users (id int, legacy text)")
                .await
                .expect("table");
        }
    }

    async fn client_for_url(&self, url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to test server: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

fn new_dir() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("phasegate-pg-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    std::fs::create_dir(dir.path().join("sock")).map_err(|e| format!("mkdir: {e}"))?;
    Ok(dir)
}

fn chown(dir: &tempfile::TempDir, run_as: Option<&str>) -> Result<(), String> {
    match run_as {
        Some(user) => run(Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(dir.path())),
        None => Ok(()),
    }
}

fn pg_ctl_start(
    dir: &Path,
    host: &str,
    port: u16,
    bindir: &Path,
    run_as: Option<&str>,
    tls: bool,
) -> Result<(), String> {
    let data = dir.join("data");
    let sock = dir.join("sock");
    let log = dir.join("server.log");
    let mut opts = format!(
        "-p {port} -k {} -c listen_addresses={host} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=60 -c shared_buffers=32MB \
         -c log_min_messages=warning",
        sock.display()
    );
    if tls {
        opts.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        ));
    }
    let mut cmd = command_as(run_as, &bindir.join("pg_ctl"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .arg("-w")
        .arg("-t")
        .arg("60")
        .arg("-o")
        .arg(opts)
        .arg("start");
    run(&mut cmd).map_err(|e| {
        format!(
            "{e}\n--- server log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-m")
            .arg("immediate")
            .arg("-w")
            .arg("stop");
        let _ = run(&mut cmd);
    }
}

/// A throwaway CA and a server certificate signed by it (SAN: localhost, 127.0.0.1).
fn make_certs(dir: &Path) -> Result<(), String> {
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| format!("write ext: {e}"))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509"])
        .args(ec)
        .args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=phasegate-test-ca",
        ]))?;
    run(Command::new("openssl")
        .current_dir(dir)
        .arg("req")
        .args(ec)
        .args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]))?;
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "30",
        "-extfile",
        "server.ext",
    ]))?;
    // PostgreSQL refuses a key readable by others.
    run(Command::new("chmod").arg("600").arg(dir.join("server.key")))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn command_as(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(u).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn run_as_user() -> Option<String> {
    if !is_root() {
        return None;
    }
    for u in ["postgres", "nobody"] {
        if Command::new("id")
            .arg("-u")
            .arg(u)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            return Some(u.to_string());
        }
    }
    None
}

/// Directory with initdb/pg_ctl/postgres.
pub fn bindir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("PHASEGATE_PG_BINDIR") {
        if !dir.is_empty() {
            return Ok(PathBuf::from(dir));
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    Err("no PostgreSQL server binaries found: install postgresql or set PHASEGATE_PG_BINDIR".into())
}

/// An initialised data directory, made once (per user, server version and credentials) in
/// the system temp dir and copied for each server: initdb costs seconds, a copy milliseconds.
fn template(bindir: &Path, run_as: Option<&str>) -> Result<PathBuf, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template(bindir, run_as))
        .clone()
}

fn make_template(bindir: &Path, run_as: Option<&str>) -> Result<PathBuf, String> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| format!("postgres --version: {e}"))?;
    let version: String = String::from_utf8_lossy(&out.stdout)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let key = format!(
        "{version}-{}-{USER}-{}",
        run_as.unwrap_or("self"),
        PASSWORD.len()
    );
    let final_dir = std::env::temp_dir().join(format!("phasegate-pg-template-{key}"));
    if final_dir.join("data").join("PG_VERSION").exists() && final_dir.join("ready").exists() {
        return Ok(final_dir.join("data"));
    }
    let dir = tempfile::Builder::new()
        .prefix("phasegate-pg-template-tmp-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let data = dir.path().join("data");
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, PASSWORD).map_err(|e| format!("write pwfile: {e}"))?;
    if let Some(u) = run_as {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{u}:"))
            .arg(dir.path()))?;
    }
    let mut cmd = command_as(run_as, &bindir.join("initdb"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-U")
        .arg(USER)
        .arg(format!("--pwfile={}", pwfile.display()))
        .arg("--auth-local=trust")
        .arg("--auth-host=scram-sha-256")
        .arg("-E")
        .arg("UTF8")
        .arg("--locale=C")
        .arg("-N");
    run(&mut cmd)?;
    std::fs::write(dir.path().join("ready"), "").map_err(|e| format!("write marker: {e}"))?;
    let tmp = dir.keep();
    // Atomic publish; if another test process won the race, use its copy and drop ours.
    if std::fs::rename(&tmp, &final_dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if final_dir.join("ready").exists() {
        Ok(final_dir.join("data"))
    } else {
        Err(format!("template {} is incomplete", final_dir.display()))
    }
}

/// Seconds-granularity sleep helper for tests polling the server.
pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
