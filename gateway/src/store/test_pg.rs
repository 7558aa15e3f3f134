//! A throwaway PostgreSQL server for tests, and [`both_backends!`], which runs a store
//! test on SQLite and on PostgreSQL.
//!
//! One server per test process, started on first use from Debian's `postgresql`
//! (`/usr/lib/postgresql/<version>/bin`, or `$PG_BIN`): `initdb` in a temp dir, then
//! `postgres` on a free 127.0.0.1 port with its socket in that dir. PostgreSQL refuses to
//! run as root, so as root (here and in CI) both run as the `postgres` user through
//! `runuser`, on a dir chowned to it. Every test gets a database of its own
//! (`CREATE DATABASE t_<random>`).
//!
//! The server never outlives the process for long: a small watchdog shell waits for the
//! test process to go (however it ends), then stops the server and removes the dir; and
//! every start first reaps the dirs of earlier runs whose process is gone, killing the
//! server recorded in their `postmaster.pid`.
//!
//! Without PostgreSQL installed the PostgreSQL half of each test is skipped with a loud
//! message, or fails when `CI=true`.
//!
//! Only std, rustix, rand and sqlx, so that the end-to-end tests in `tests/` use it too:
//! they enable the `test-pg` feature, which exports this module (it is not part of the
//! gateway's API).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

#[cfg(test)]
use super::Store;

/// Prefix of the server dirs in the temp dir.
const DIR_PREFIX: &str = "gateway-test-pg-";

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The test process's server.
pub struct PgServer {
    /// The port on 127.0.0.1.
    pub port: u16,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

impl PgServer {
    /// The URL of database `name` as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// The test process's server, started on first use; `None` (after saying so loudly) when
/// PostgreSQL is not installed. Panics when it cannot start, or is missing under
/// `CI=true`.
pub async fn server() -> Option<&'static PgServer> {
    let started = tokio::task::spawn_blocking(|| SERVER.get_or_init(start))
        .await
        .expect("PostgreSQL start-up thread panicked");
    match started {
        Ok(s) => Some(s),
        Err(e) if e.starts_with("not installed") => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL is required under CI=true: {e}");
            }
            // Past libtest's output capture (it takes only the print macros), so that the
            // skip shows although the test passes.
            let _ = writeln!(
                std::io::stderr(),
                "*** SKIPPED the PostgreSQL half of {}: PostgreSQL {e} \
                 (apt-get install postgresql; CI=true makes this a failure) ***",
                std::thread::current().name().unwrap_or("a test")
            );
            None
        }
        Err(e) => panic!("could not start a PostgreSQL server for the tests: {e}"),
    }
}

/// The URL of a new, empty database on the test server.
pub async fn database_url() -> Option<String> {
    let server = server().await?;
    let name = format!("t_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(&server.url("postgres"))
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    admin.close().await.ok();
    Some(server.url(&name))
}

/// A store on a new database of the test server.
#[cfg(test)]
pub(crate) async fn store() -> Option<Store> {
    let url = database_url().await?;
    Some(Store::connect(&url).await.expect("Store::connect"))
}

/// Runs each store test twice: `sqlite` on a store in a temp dir, `postgres` on a store in
/// a new database of the test server (skipped without PostgreSQL, see the module docs).
///
/// ```ignore
/// both_backends! {
///     async fn name(store) { /* uses `store: Store` */ }
/// }
/// ```
#[cfg(test)]
macro_rules! both_backends {
    ($(async fn $name:ident($store:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let $store = $crate::store::Store::open(dir.path()).await.unwrap();
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some($store) = $crate::store::test_pg::store().await else {
                    return;
                };
                $body
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use both_backends;

/// Where the PostgreSQL binaries are: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `program` from `bin`, run as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bin.join(program);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn start() -> Result<PgServer, String> {
    let cluster = Cluster::init(&[])?;
    // Left running: the watchdog stops it with the process.
    let (port, _child) = cluster.launch_on_a_free_port()?;
    Ok(PgServer { port })
}

/// A data dir made by `initdb` (as `postgres` when we are root), cleaned up with the
/// process by the watchdog, and the settings its server runs with.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    settings: Vec<String>,
}

impl Cluster {
    /// `initdb` in a new dir; `files` (name, contents) are written beside the data dir
    /// first, owned by the server's user with mode 0600 (a TLS key must be), and
    /// `settings` are `-c` settings of every start, where `{dir}` stands for that dir.
    fn init(files: &[(&str, &[u8])]) -> Result<Self, String> {
        let bin = bin_dir()
            .filter(|b| b.join("initdb").exists())
            .ok_or("not installed (no initdb in $PG_BIN or /usr/lib/postgresql/*/bin)")?;
        reap_stale();
        let as_postgres = rustix::process::geteuid().is_root();
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| format!("write owner.pid: {e}"))?;
        // Before anything else can fail: the dir goes when this process does.
        spawn_watchdog(&dir)?;
        for (name, contents) in files {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|e| format!("write {name}: {e}"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {name}: {e}"))?;
        }
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir))?;
        }
        run(pg_command(&bin, "initdb", as_postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]))?;
        Ok(Self {
            bin,
            dir,
            as_postgres,
            settings: Vec::new(),
        })
    }

    /// Starts the server on a free port (trying again if another process takes the
    /// port first).
    fn launch_on_a_free_port(&self) -> Result<(u16, std::process::Child), String> {
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("find a free port: {e}"))?
                .port();
            match self.launch(port) {
                Ok(child) => return Ok((port, child)),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Starts the server on `port` and waits until it accepts connections.
    fn launch(&self, port: u16) -> Result<std::process::Child, String> {
        let dir = &self.dir;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| format!("open server.log: {e}"))?;
        let mut cmd = pg_command(&self.bin, "postgres", self.as_postgres);
        cmd.arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test server: durability buys nothing, and many tests run at once.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"]);
        for setting in &self.settings {
            cmd.arg("-c")
                .arg(setting.replace("{dir}", &dir.to_string_lossy()));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn postgres: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                ));
            }
            let ready = pg_command(&self.bin, "pg_isready", false)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "postgres did not accept connections within {}s",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A PostgreSQL server of one test's own, for what the shared one must not see: a
/// restart, TLS. Stopped when dropped (and with the process, by the watchdog).
pub struct OwnServer {
    cluster: Cluster,
    /// The port on 127.0.0.1, the same across [`OwnServer::start`]s.
    pub port: u16,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl OwnServer {
    /// Starts a server of its own: `files` (name, contents) are written beside its data
    /// dir (mode 0600, owned by the server's user), `settings` are its `-c` settings,
    /// where `{dir}` stands for that dir (`ssl_cert_file={dir}/server.crt`). `None`
    /// when PostgreSQL is not installed (after saying so; a failure under `CI=true`).
    pub async fn new(settings: &[&str], files: &[(&str, &[u8])]) -> Option<Self> {
        // The shared server's start says whether PostgreSQL is here, the same way.
        server().await?;
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let files: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_vec()))
            .collect();
        let started = tokio::task::spawn_blocking(move || {
            let files: Vec<(&str, &[u8])> =
                files.iter().map(|(n, c)| (n.as_str(), &c[..])).collect();
            let mut cluster = Cluster::init(&files)?;
            cluster.settings = settings;
            let (port, child) = cluster.launch_on_a_free_port()?;
            Ok::<_, String>(OwnServer {
                cluster,
                port,
                child: std::sync::Mutex::new(Some(child)),
            })
        })
        .await
        .expect("PostgreSQL start-up thread panicked");
        Some(started.unwrap_or_else(|e| panic!("could not start a PostgreSQL server: {e}")))
    }

    /// The URL of database `name` as the superuser (`postgres` always exists).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server (a fast shutdown: sessions are ended) and waits until it is gone.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let _ = run(
            pg_command(&self.cluster.bin, "pg_ctl", self.cluster.as_postgres)
                .arg("stop")
                .arg("-D")
                .arg(self.cluster.dir.join("data"))
                .args(["-m", "fast", "-w", "-s"]),
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the stopped server again, on the same port and with the same settings.
    pub fn start(&self) -> Result<(), String> {
        let mut child = self.child.lock().unwrap();
        if child.is_none() {
            *child = Some(self.cluster.launch(self.port)?);
        }
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cluster.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.cluster.dir);
    }
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

/// Starts a shell that waits for this process to end, then stops the server (SIGINT, a
/// fast shutdown; SIGKILL after 5 s) and removes `dir`. It ignores SIGINT and SIGHUP so
/// that a Ctrl-C of `cargo test` does not stop it before it has cleaned up.
fn spawn_watchdog(dir: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"
        trap '' INT HUP
        while [ -e "/proc/$0" ]; do sleep 0.2; done
        pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
        if [ -n "$pid" ]; then
            kill -INT "$pid" 2>/dev/null
            for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
        fi
        rm -rf "$1"
    "#;
    Command::new("sh")
        .args(["-c", SCRIPT])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("spawn the watchdog: {e}"))
}

/// Removes the server dirs of earlier test processes that are gone (killed before their
/// watchdog could clean up), killing the server each one's `postmaster.pid` names.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = e.path();
        let owner = std::fs::read_to_string(dir.join("owner.pid")).unwrap_or_default();
        let owner = owner.trim();
        if owner.is_empty() {
            // Another process may be creating it this moment: only an old one is stale.
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60));
            if young {
                continue;
            }
        } else if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let postmaster = std::fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = postmaster {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
