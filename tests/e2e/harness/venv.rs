//! Python tools the tests run from the venvs `cargo xtask test` makes.
//!
//! `cargo xtask test` names each venv's python in an environment variable, or says there
//! `missing: <why>`. Then a test that needs it fails with that reason rather than skipping.
//! Under a plain `cargo test`, a venv left by an earlier run is used when it can `import`
//! the module; otherwise the test skips and says why.

use std::path::PathBuf;
use std::process::Command;

/// The python for `var`, falling back to `<repo>/<dir>/bin/python` when it imports `module`.
/// `Ok(None)`: skip (printed); a missing tool under `cargo xtask test` panics with its reason.
pub fn python(var: &str, dir: &str, module: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(v) => match v.strip_prefix("missing: ") {
            Some(why) => panic!("cargo xtask test could not install {module}: {why}"),
            None => Some(PathBuf::from(v)),
        },
        Err(_) => {
            let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir)
                .join("bin/python");
            let ok = Command::new(&local)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                eprintln!("skipping: no {dir} with {module} (run `cargo xtask test`)");
            }
            ok.then_some(local)
        }
    }
}
