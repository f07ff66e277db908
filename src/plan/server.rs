//! A throwaway PostgreSQL server for `phasegate plan`: `initdb` into a temporary directory,
//! started with `pg_ctl` listening only on a Unix socket inside that directory (no TCP port,
//! so nothing to collide with), stopped and deleted on drop.
//!
//! Binaries: `--pg-bindir`, else `initdb`/`pg_ctl` on `PATH`, else the newest Debian
//! `/usr/lib/postgresql/<major>/bin`. PostgreSQL refuses to run as root: as root the server
//! runs as the `postgres` user (through `runuser`, as the test suites do) and the directory is
//! handed to it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::PlanError;

/// The superuser `initdb` creates; the socket is reachable only through the private directory.
const USER: &str = "phasegate_plan";
/// Any port: with `listen_addresses=''` it only names the socket file in our own directory.
const PORT: u16 = 5432;

pub struct Throwaway {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    run_as: Option<String>,
    started: bool,
}

impl Throwaway {
    /// Creates and starts a server. Errors say which step failed and show the server log.
    pub fn start(bindir: Option<&Path>) -> Result<Throwaway, PlanError> {
        let bindir = find_bindir(bindir)?;
        let run_as = run_as_user()?;
        let dir = tempfile::Builder::new()
            .prefix("phasegate-plan-")
            .tempdir()
            .map_err(|e| PlanError::Server(format!("cannot create a temporary directory: {e}")))?;
        let mut server = Throwaway {
            dir,
            bindir,
            run_as,
            started: false,
        };
        std::fs::create_dir(server.socket_dir())
            .map_err(|e| PlanError::Server(format!("cannot create the socket directory: {e}")))?;
        if let Some(user) = &server.run_as {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(server.dir.path()))?;
        }
        run(server
            .tool("initdb")
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C", "-N"]))?;
        let opts = format!(
            "-k {} -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=20",
            server.socket_dir().display()
        );
        let log = server.dir.path().join("server.log");
        let started = run(server
            .tool("pg_ctl")
            .arg("-D")
            .arg(server.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"]));
        if let Err(e) = started {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(PlanError::Server(format!("{e}\n--- server log ---\n{log}")));
        }
        server.started = true;
        Ok(server)
    }

    /// Connection settings for database `postgres` over the socket.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(self.socket_dir())
            .port(PORT)
            .user(USER)
            .dbname("postgres");
        c
    }

    /// Where initdb and pg_ctl were found.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        if self.started {
            let _ = run(self.tool("pg_ctl").arg("-D").arg(self.data_dir()).args([
                "-m",
                "immediate",
                "-w",
                "stop",
            ]));
        }
        // The TempDir removes the directory after this.
    }
}

/// The directory holding `initdb` and `pg_ctl`.
pub fn find_bindir(given: Option<&Path>) -> Result<PathBuf, PlanError> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = given {
        return if has_tools(d) {
            Ok(d.to_path_buf())
        } else {
            Err(PlanError::Server(format!(
                "--pg-bindir {}: no initdb and pg_ctl there",
                d.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_tools(d)) {
            return Ok(d);
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let major = e.file_name().to_string_lossy().parse().ok()?;
                    let bin = e.path().join("bin");
                    has_tools(&bin).then_some((major, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    debian.pop().map(|(_, d)| d).ok_or_else(|| {
        PlanError::Server(
            "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or in /usr/lib/postgresql/*/bin: install the server package (e.g. `apt-get install postgresql`), pass --pg-bindir, or give a database with --url".into(),
        )
    })
}

/// As root, the user the server runs as (PostgreSQL refuses root).
fn run_as_user() -> Result<Option<String>, PlanError> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Ok(None);
    }
    let postgres_exists = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .is_ok_and(|o| o.status.success());
    if postgres_exists {
        Ok(Some("postgres".into()))
    } else {
        Err(PlanError::Server(
            "PostgreSQL does not run as root and there is no `postgres` user to run it as: run `phasegate plan` as another user, create one (`useradd --system postgres`), or give a database with --url".into(),
        ))
    }
}

fn run(cmd: &mut Command) -> Result<(), PlanError> {
    let out = cmd
        .output()
        .map_err(|e| PlanError::Server(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PlanError::Server(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
