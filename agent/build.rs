//! Compiles Tollgate's kernel programs (`ebpf/src/*.bpf.c`) with clang-19 into `OUT_DIR/bpf/`,
//! where `src/kernel/objects.rs` embeds them.
//!
//! When clang-19 or the libbpf headers are missing (or `TOLLGATE_BPF_STUBS=1` is set), it writes
//! empty stubs instead and sets `cfg(tollgate_no_bpf)` plus `TOLLGATE_BPF_MISSING` (the reason),
//! so `cargo check`, clippy and the rest of the agent build anywhere; the agent then reports at
//! start-up that its kernel features are absent and how to get them. A C compile error is still a
//! build error.
//!
//! Environment: `TOLLGATE_CLANG` (compiler, default `clang-19`), `TOLLGATE_BPF_INCLUDE` (extra
//! include directories, `:`-separated), `TOLLGATE_BPF_STUBS=1` (force stubs).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Program objects, compiled in this order; the loader embeds each by this name.
const PROGRAMS: &[&str] = &[
    "maps",
    "connect4",
    "connect6",
    "sockops",
    "sock_state",
    "reuseport",
];

/// Headers every program includes; a change to one rebuilds all.
const HEADERS: &[&str] = &["types.h", "maps.h", "attr.h"];

/// What to tell a user whose build had no clang.
const INSTALL_HINT: &str = "apt-get install clang-19 libbpf-dev";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tollgate_no_bpf)");
    for var in [
        "TOLLGATE_CLANG",
        "TOLLGATE_BPF_INCLUDE",
        "TOLLGATE_BPF_STUBS",
        "TOLLGATE_REQUIRE_BPF",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("bpf");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/bpf");

    for p in PROGRAMS {
        println!(
            "cargo::rerun-if-changed={}",
            ebpf.join(format!("src/{p}.bpf.c")).display()
        );
    }
    for h in HEADERS {
        println!(
            "cargo::rerun-if-changed={}",
            ebpf.join(format!("include/tollgate/{h}")).display()
        );
    }

    match toolchain() {
        Ok(tc) => {
            for p in PROGRAMS {
                compile(&tc, &ebpf, &out, p);
            }
            println!("cargo::rustc-env=TOLLGATE_BPF_MISSING=");
        }
        Err(reason) => {
            // Release images must not ship stubs by accident (the Dockerfile sets this).
            if env::var("TOLLGATE_REQUIRE_BPF").is_ok_and(|v| v == "1") {
                panic!("TOLLGATE_REQUIRE_BPF=1 but the kernel programs cannot be built: {reason}");
            }
            println!("cargo::warning=building without kernel programs: {reason}");
            for p in PROGRAMS {
                std::fs::write(out.join(format!("{p}.bpf.o")), b"").expect("write stub");
            }
            println!("cargo::rustc-cfg=tollgate_no_bpf");
            println!("cargo::rustc-env=TOLLGATE_BPF_MISSING={reason}");
        }
    }
}

/// The compiler and include directories, or why there are none.
struct Toolchain {
    clang: String,
    includes: Vec<PathBuf>,
    arch: &'static str,
}

fn toolchain() -> Result<Toolchain, String> {
    if env::var("TOLLGATE_BPF_STUBS").is_ok_and(|v| v == "1") {
        return Err(format!(
            "TOLLGATE_BPF_STUBS=1 was set; unset it (needs {INSTALL_HINT})"
        ));
    }
    let clang = env::var("TOLLGATE_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(format!(
                "{clang} was not found at build time; install it with `{INSTALL_HINT}` and rebuild"
            ))
        }
    }

    let mut includes: Vec<PathBuf> = env::var("TOLLGATE_BPF_INCLUDE")
        .map(|v| {
            v.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    // Debian/Ubuntu keep <asm/types.h> under the multiarch directory, which `-target bpf` does
    // not search.
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match target_arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    includes.push(PathBuf::from(format!("/usr/include/{multiarch}")));
    let arch = match target_arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        _ => "x86",
    };

    let have_libbpf = includes
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/include"), Path::new("/usr/local/include")])
        .any(|d| d.join("bpf/bpf_helpers.h").is_file());
    if !have_libbpf {
        return Err(format!("libbpf headers (bpf/bpf_helpers.h) were not found at build time; install them with `{INSTALL_HINT}` and rebuild"));
    }
    let have_uapi = includes
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/include")])
        .any(|d| d.join("asm/types.h").is_file());
    if !have_uapi {
        return Err(format!("kernel UAPI headers (asm/types.h) were not found at build time; install them with `apt-get install linux-libc-dev {}` and rebuild", "libbpf-dev"));
    }
    Ok(Toolchain {
        clang,
        includes,
        arch,
    })
}

fn compile(tc: &Toolchain, ebpf: &Path, out: &Path, program: &str) {
    let src = ebpf.join(format!("src/{program}.bpf.c"));
    let obj = out.join(format!("{program}.bpf.o"));
    let mut cmd = Command::new(&tc.clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{}", tc.arch))
        .arg("-I")
        .arg(ebpf.join("include"));
    for dir in &tc.includes {
        cmd.arg("-idirafter").arg(dir);
    }
    cmd.arg("-c").arg(&src).arg("-o").arg(&obj);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tc.clang));
    if !output.status.success() {
        panic!(
            "compiling {} failed:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
