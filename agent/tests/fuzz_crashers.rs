//! Replays every minimized crasher (`fuzz/crashers/<target>/`) and every seed
//! (`fuzz/corpus/<target>/`) through the fuzz entry points in `tollgate::fuzzing`, so a
//! fixed crash stays fixed without a nightly toolchain or libFuzzer. Fails when any of them
//! panics, and names each file that did.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 9] = [
    ("request_head", tollgate::fuzzing::request_head),
    ("chunked", tollgate::fuzzing::chunked),
    ("inspect_rewrite", tollgate::fuzzing::inspect_rewrite),
    ("sse_usage", tollgate::fuzzing::sse_usage),
    ("response_head", tollgate::fuzzing::response_head),
    ("config", tollgate::fuzzing::config),
    ("batch_upload", tollgate::fuzzing::batch_upload),
    ("guard_scan", tollgate::fuzzing::guard_scan),
    ("cache_spill", tollgate::fuzzing::cache_spill),
];

fn fuzz_dir() -> PathBuf {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR"));
    agent.parent().unwrap_or(agent).join("fuzz")
}

/// The files directly under `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

/// Runs each file through its target on a thread with a worker's stack (the agent parses
/// provider JSON on `worker::STACK_BYTES` stacks; a test thread's 2 MiB, with a debug
/// build's large frames, overflows on inputs nested within the depth limit that the agent
/// handles); returns (files run, files that panicked).
fn replay(kind: &str) -> (usize, Vec<String>) {
    let kind = kind.to_string();
    std::thread::Builder::new()
        .name(format!("replay-{kind}"))
        .stack_size(tollgate::worker::STACK_BYTES)
        .spawn(move || replay_here(&kind))
        .unwrap_or_else(|e| panic!("spawning the replay thread: {e}"))
        .join()
        .unwrap_or_else(|_| panic!("the replay thread panicked outside a target"))
}

fn replay_here(kind: &str) -> (usize, Vec<String>) {
    let mut run = 0;
    let mut failed = Vec::new();
    for (name, target) in TARGETS {
        for path in files(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run += 1;
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(format!("{name}: {}", path.display()));
            }
        }
    }
    (run, failed)
}

#[test]
fn crashers_do_not_panic() {
    let (_, failed) = replay("crashers");
    assert!(
        failed.is_empty(),
        "{} crasher(s) still panic (message above each):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn seeds_do_not_panic() {
    let (run, failed) = replay("corpus");
    assert!(
        run > 0,
        "no seeds under {}",
        fuzz_dir().join("corpus").display()
    );
    assert!(
        failed.is_empty(),
        "{} seed(s) panic (message above each):\n{}",
        failed.len(),
        failed.join("\n")
    );
}
