//! A throwaway private CA made with the host's `openssl` (for TLS servers the tests start:
//! nginx in front of the simulator, PostgreSQL for ledger shipping), and small process helpers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a helper command (`openssl`) may run.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A binary on PATH, or in the sbin directories a non-root PATH often lacks.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `cmd` (cwd `dir`) to completion within [`START_TIMEOUT`], panicking with its output if it
/// fails; output goes to files in `dir`, so nothing can block on a full pipe.
fn run_in(dir: &Path, mut cmd: Command) {
    let out_path = dir.join("cmd.out");
    let err_path = dir.join("cmd.err");
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a helper command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.success(),
        "{cmd:?} failed ({status}):\n{}\n{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
}

/// A CA certificate and a server certificate it signed, as PEM files.
pub struct Pki {
    /// The CA certificate: what `ca_file` points at.
    pub ca: PathBuf,
    /// The server certificate (SAN `DNS:localhost`, `IP:127.0.0.1`) and its key, for nginx.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-contained openssl config (no dependency on the host's openssl.cnf): a CA with
/// `keyCertSign`, and a leaf for `localhost` and `127.0.0.1` that webpki accepts (v3, not a CA,
/// `serverAuth`).
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl Pki {
    /// Creates the CA and the server certificate in `dir` with `openssl`.
    pub fn create(openssl: &Path, dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("creating the pki directory");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("writing openssl.cnf");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let openssl_cmd = |args: &[&str]| {
            let mut cmd = Command::new(openssl);
            cmd.args(args);
            run_in(dir, cmd);
        };
        openssl_cmd(
            &[
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "ca",
                ][..],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                &["-subj", "/CN=Tollgate e2e throwaway CA"],
            ]
            .concat(),
        );
        openssl_cmd(
            &[
                &["req", "-new", "-config", "openssl.cnf"][..],
                &ec[..],
                &["-keyout", "server.key", "-out", "server.csr"],
                &["-subj", "/CN=localhost"],
            ]
            .concat(),
        );
        openssl_cmd(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "server",
            "-out",
            "server.pem",
        ]);
        Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}
