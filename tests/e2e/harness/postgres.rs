//! A private PostgreSQL server for a test: the Debian package's binaries (`cargo xtask test`
//! installs `postgresql`; a machine without them fails the test with that said, it does not
//! skip), `initdb` into a new directory under `/tmp`, and `postgres` on a free loopback port
//! with its socket in that directory, trust authentication, superuser `postgres`.
//!
//! PostgreSQL refuses to run as root, and the CI machines run the tests as root: then both
//! binaries run as the `postgres` system user (setuid/setgid before exec, supplementary groups
//! dropped) and the directory is handed to it. The server is stopped by its pid (SIGINT: a fast
//! shutdown, then SIGKILL if it lingers) in [`Postgres::stop`] and on drop; [`Postgres::start_again`]
//! starts it on the same directory and port (an outage and its end).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::procs::free_port;

/// How long a start may take (initdb excluded).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// The uid and gid the server runs as (`postgres` when the test runs as root).
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// Serving TLS with this certificate and key (copies owned by the server's user).
    tls: Option<(PathBuf, PathBuf)>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `postgres`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): \
             `cargo xtask test` installs it (apt-get install postgresql)"
        ),
    }
}

/// The `postgres` system user's uid and gid, when this process runs as root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = c"postgres";
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at once, before any other
    // call that could reuse its static storage (tests in this binary do not call getpw*).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root and there is no `postgres` user to run PostgreSQL as (the Debian \
         package creates it: apt-get install postgresql)"
    );
    // SAFETY: pw is non-null and points to a valid passwd entry.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

impl Postgres {
    /// A new cluster in a new directory, started.
    pub fn start() -> Postgres {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "tollgate-e2e-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the PostgreSQL directory");
        let user = run_as();
        if let Some(u) = user {
            chown(&dir, u);
        }
        let mut pg = Postgres {
            port: free_port(),
            bin,
            dir,
            user,
            child: None,
            tls: None,
        };
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdin(Stdio::null())
            .stdout(pg.log("initdb.log"))
            .stderr(pg.log("initdb.log"));
        let status = initdb.status().expect("running initdb");
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            std::fs::read_to_string(pg.dir.join("initdb.log")).unwrap_or_default()
        );
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self, name: &str) -> Stdio {
        let f = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("the PostgreSQL log");
        Stdio::from(f)
    }

    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Starts the server (again) on its directory and port, and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test's data: nothing to keep after a power loss.
            .args(["-c", "fsync=off"]);
        if let Some((cert, key)) = &self.tls {
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(self.log("postgres.log"))
            .stderr(self.log("postgres.log"));
        let mut child = cmd.spawn().expect("spawning postgres");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("postgres exited at start ({status}):\n{}", self.log_text());
            }
            if self.try_client().is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "postgres did not accept connections within {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Restarts the server serving TLS as well, with `pki`'s server certificate (SAN
    /// `127.0.0.1`); plain connections still work (the test's own client uses them).
    pub fn enable_tls(&mut self, pki: &super::pki::Pki) {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.dir.join("server.crt");
        let key = self.dir.join("server.key");
        std::fs::copy(&pki.cert, &cert).expect("copying the server certificate");
        std::fs::copy(&pki.key, &key).expect("copying the server key");
        // PostgreSQL refuses a key that others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the server key");
        if let Some(u) = self.user {
            chown(&cert, u);
            chown(&key, u);
        }
        self.stop();
        self.tls = Some((cert, key));
        self.start_again();
    }

    /// Stops the server by its pid: SIGINT (fast shutdown: clients are cut), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn try_client(&self) -> Result<postgres::Client, postgres::Error> {
        let mut cfg: postgres::Config = self.url().parse().expect("the URL");
        cfg.connect_timeout(Duration::from_secs(2));
        cfg.connect(postgres::NoTls)
    }

    /// A new client connection.
    pub fn client(&self) -> postgres::Client {
        self.try_client()
            .unwrap_or_else(|e| panic!("connecting to {}: {e}\n{}", self.url(), self.log_text()))
    }

    /// The server's log, its last lines.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("--- postgres log ---\n{}", self.log_text());
        }
        self.stop();
        if panicking || std::env::var_os("TOLLGATE_E2E_KEEP").is_some() {
            eprintln!("kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
