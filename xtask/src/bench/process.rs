//! Starting and stopping the servers under test as child processes on loopback.
//!
//! Why it exists: every path (simulator, agent, nginx) is a real process, started fresh, waited on until it
//! serves, logged to a file under the bench's work directory, and stopped by pid (SIGTERM, then SIGKILL)
//! even when the bench fails half-way. Never kills anything it did not start.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running server child.
#[derive(Debug)]
pub struct Server {
    name: String,
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Server {
    /// Start `cmd` and wait for the stdout line `... listening on ADDR` that the simulator and agent print.
    pub fn start_announced(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Self> {
        let (log, stderr) = open_log(name, log_dir)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel();
        let mut copy = File::options()
            .append(true)
            .open(&log)
            .context("opening the log")?;
        // Keep draining stdout for the server's lifetime so it never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(copy, "{line}");
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            name: name.into(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = announced_addr(&line) {
                        server.addr = addr;
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: it exited (or closed stdout) without announcing.
                    thread::sleep(Duration::from_millis(100));
                }
            }
            server.fail_if_exited()?;
            if left.is_zero() {
                bail!(
                    "{name} did not announce its address within {READY_TIMEOUT:?}; see {}",
                    server.log.display()
                );
            }
        }
    }

    /// Start `cmd`, which serves on the known `addr` and prints nothing useful (nginx); wait until it accepts.
    pub fn start_listening(
        name: &str,
        mut cmd: Command,
        addr: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let (log, stderr) = open_log(name, log_dir)?;
        let stdout = stderr.try_clone().context("cloning the log handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut server = Self {
            name: name.into(),
            child,
            addr,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            server.fail_if_exited()?;
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not accept on {addr} within {READY_TIMEOUT:?}; see {}",
                    server.log.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting on the child")? {
            bail!(
                "{} exited ({status}) before serving: {}",
                self.name,
                tail(&self.log_text(), 600)
            );
        }
        Ok(())
    }

    /// SIGTERM, wait, then SIGKILL. Returns the exit status description.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop_within(STOP_TIMEOUT).map(drop)
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL (an error). Returns the exit status.
    pub fn stop_within(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.terminate(timeout)
    }

    /// SIGKILL (no chance to clean up, like a crash or the OOM killer) and reap it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing the child")?;
        self.child.wait().context("reaping the child")?;
        Ok(())
    }

    /// Its exit status, if it has exited (reaped here).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill takes no pointers; `pid` is our own child, not yet reaped, so it cannot be reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().context("killing the child")?;
        self.child.wait().context("reaping the child")?;
        bail!(
            "{} ignored SIGTERM for {timeout:?} and was killed",
            self.name
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate(STOP_TIMEOUT);
    }
}

/// `tollgate listening on 127.0.0.1:4000` → the address.
pub fn announced_addr(line: &str) -> Option<SocketAddr> {
    // The agent announces its admin listener first (`tollgate admin listening on`): not the one.
    if line.contains(" admin listening on ") {
        return None;
    }
    let (_, rest) = line.split_once("listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A free loopback port (bound and released; another process could take it in between, which only fails
/// the start with a clear error).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    listener.local_addr().context("probe port address")
}

fn open_log(name: &str, dir: &Path) -> anyhow::Result<(PathBuf, File)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.log"));
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok((path, file))
}

/// The last `max` bytes of `text`, on a char boundary.
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_lines() {
        assert_eq!(
            announced_addr("tollgate-sim listening on 127.0.0.1:41234"),
            Some(SocketAddr::from(([127, 0, 0, 1], 41234)))
        );
        assert_eq!(
            announced_addr("tollgate listening on [::1]:80 (io_uring)").map(|a| a.port()),
            Some(80)
        );
        assert_eq!(announced_addr("starting up"), None);
    }

    #[test]
    fn tail_keeps_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
