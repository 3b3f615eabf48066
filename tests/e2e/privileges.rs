//! Least privilege, for real: the agent holding only the capabilities the Helm chart and the
//! systemd unit grant (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) loads, attaches and pins every
//! program, intercepts and attributes an unmodified client, and detaches on stop; both as
//! uid 0 with the bounding set cut to those three (the chart's container) and as `nobody`
//! with them as ambient capabilities (the systemd unit). With any one of them missing, the
//! agent names it, serves as a plain proxy and leaves nothing in the kernel.
//!
//! Needs root, cgroup v2, capsh and the kernel objects; skips (and passes) otherwise, saying why.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::procs::run_tollgate;
use crate::harness::{post_raw, AgentConfig, Sim};
use crate::interception::{
    assert_programs_gone, intercepted_case, skip_reason, KernelAgent, Launch, RULES,
};

const KERNEL_CAPS: [&str; 3] = ["cap_bpf", "cap_net_admin", "cap_perfmon"];
/// Bits 39 (CAP_BPF), 12 (CAP_NET_ADMIN) and 38 (CAP_PERFMON).
const KERNEL_CAP_BITS: u64 = (1 << 39) | (1 << 12) | (1 << 38);

fn skip() -> Option<String> {
    if let Some(why) = skip_reason() {
        return Some(why);
    }
    let capsh = Command::new("capsh")
        .arg("--print")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !capsh.is_ok_and(|s| s.success()) {
        return Some("capsh is not installed (Debian's libcap2-bin)".into());
    }
    None
}

/// A field of `/proc/PID/status` (`CapEff`, `Uid`, ...), after its colon.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let prefix = format!("{name}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} line in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The agent process's effective capability set.
fn cap_eff(pid: u32) -> u64 {
    u64::from_str_radix(&status_field(pid, "CapEff"), 16).expect("CapEff is hex")
}

/// The effective uid (the second of the four `Uid:` figures).
fn uid_of(pid: u32) -> u32 {
    status_field(pid, "Uid")
        .split_whitespace()
        .nth(1)
        .and_then(|u| u.parse().ok())
        .expect("effective uid")
}

#[test]
fn the_three_capabilities_are_enough_as_root_and_as_nobody() {
    if let Some(why) = skip() {
        eprintln!("skipping: {why}");
        return;
    }
    for (launch, uid) in [
        (Launch::RootWith(&KERNEL_CAPS), 0),
        (Launch::NobodyWith(&KERNEL_CAPS), 65534),
    ] {
        let sim = Sim::start(&[]);
        let extra = format!("intercept: [\"{}\"]\n{RULES}", sim.addr);
        let mut agent =
            KernelAgent::launch(AgentConfig::for_sim(&sim), &extra, "127.0.0.1:0", &launch);
        let pid = agent.proc.as_ref().expect("running").pid();
        assert_eq!(uid_of(pid), uid);
        assert_eq!(
            cap_eff(pid),
            KERNEL_CAP_BITS,
            "the agent holds exactly the three capabilities"
        );
        assert_eq!(agent.kernel_refused(), None, "uid {uid}");
        // Without CAP_SYS_NICE the ledger writer could enter SCHED_IDLE but never leave it,
        // so it stays at the normal policy (0).
        assert_eq!(
            crate::harness::procs::thread_policy(pid, "tollgate-contro"),
            Some(0),
            "uid {uid}"
        );
        let ids = agent.program_ids();
        assert!(ids.len() >= 3, "programs: {ids:?}");

        // Interception and attribution: an unmodified client in its own cgroup.
        intercepted_case(&agent, sim.addr, "sim");
        // The pinned maps are there and readable by node tools.
        assert!(agent.pin_dir.join("tg_attr").exists());
        let pin_dir = agent.pin_dir.to_string_lossy().into_owned();
        let top = run_tollgate(
            &["top", "--once", "--pin-dir", &pin_dir],
            Duration::from_secs(20),
        );
        assert!(top.status.success(), "{top:#?}");
        assert!(
            top.stdout.lines().any(|l| l.starts_with("smol")),
            "{}",
            top.stdout
        );

        // A graceful stop detaches and unpins, with only these capabilities.
        let mut proc = agent.proc.take().expect("running");
        let status = proc.terminate().expect("stopping tollgate");
        assert!(status.success(), "uid {uid}: tollgate exited with {status}");
        assert!(
            !agent.pin_dir.exists(),
            "uid {uid}: pins outlived the agent"
        );
        assert_programs_gone(&ids);
    }
}

#[test]
fn each_missing_capability_is_named_and_the_agent_falls_back() {
    if let Some(why) = skip() {
        eprintln!("skipping: {why}");
        return;
    }
    const WITHOUT_BPF: [&str; 2] = ["cap_net_admin", "cap_perfmon"];
    const WITHOUT_NET_ADMIN: [&str; 2] = ["cap_bpf", "cap_perfmon"];
    const WITHOUT_PERFMON: [&str; 2] = ["cap_bpf", "cap_net_admin"];
    let sim = Sim::start(&[]);
    for (keep, missing) in [
        (&WITHOUT_BPF, "CAP_BPF"),
        (&WITHOUT_NET_ADMIN, "CAP_NET_ADMIN"),
        (&WITHOUT_PERFMON, "CAP_PERFMON"),
    ] {
        let extra = format!("intercept: [\"{}\"]\n", sim.addr);
        let agent = KernelAgent::launch(
            AgentConfig::for_sim(&sim),
            &extra,
            "127.0.0.1:0",
            &Launch::RootWith(keep),
        );
        let ready = agent.readyz();
        let features = &ready["kernel"]["features"];
        for f in ["interception", "attribution", "counters"] {
            assert_eq!(features[f]["active"], false, "{missing}: {ready}");
            let reason = features[f]["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains(&format!("lack {missing}")),
                "the reason names {missing}: {reason}"
            );
        }
        assert!(
            agent
                .proc
                .as_ref()
                .expect("running")
                .logs_tail()
                .contains(&format!("lack {missing}")),
            "the log names {missing}"
        );
        // Nothing was loaded or pinned, and the agent still proxies.
        assert!(!agent.pin_dir.join("tg_attr").exists(), "{missing}");
        assert_eq!(
            ready["kernel"]["programs"].as_array().map(Vec::len),
            Some(0),
            "{ready}"
        );
        let r = post_raw(
            agent.addr,
            "/v1/chat/completions",
            &[],
            br#"{"model":"smol","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#,
        );
        assert_eq!(r.status, 200, "{missing}: {}", r.text());
    }
}
