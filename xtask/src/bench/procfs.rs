//! Reads a server's CPU time and memory from /proc, summed over its whole process tree.
//!
//! Why it exists: on two vCPUs raw RPS mostly measures the load generator, so the bench reports what the
//! server itself spent per request. CPU is the first field of `/proc/PID/task/TID/schedstat` (ns on CPU,
//! finer than the tick-based `stat`), summed over every thread of the process and of its descendants (nginx
//! serves from a worker child). Memory is `VmRSS` from `/proc/PID/status`. Threads that exit between two
//! snapshots take their time with them, so deltas saturate at zero.

use std::fs;
use std::path::Path;

/// First field of a schedstat line: time spent on the CPU, in ns.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `VmRSS:    1234 kB` from a `/proc/PID/status` text, in KiB.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parent pid from a `/proc/PID/stat` text. The command name is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted after the *last* `)`.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `root` and every live descendant of it.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(entry.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat_ppid)
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    tree
}

/// CPU time of every live thread of one process, in ns; `None` if schedstat is unreadable.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread may exit between listing and reading; skip it.
        if let Some(ns) = fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .as_deref()
            .and_then(parse_schedstat_ns)
        {
            total += ns;
        }
    }
    Some(total)
}

/// CPU time of the whole tree under `root`, in ns; `None` if the root's schedstat is unreadable.
pub fn tree_cpu_ns(root: u32) -> Option<u64> {
    let mut total = process_cpu_ns(root)?;
    for pid in process_tree(root).into_iter().skip(1) {
        total += process_cpu_ns(pid).unwrap_or(0);
    }
    Some(total)
}

/// Resident memory of the whole tree under `root`, in KiB (shared pages count once per process).
pub fn tree_rss_kib(root: u32) -> Option<u64> {
    let read = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(parse_vmrss_kib)
    };
    let mut total = read(root)?;
    for pid in process_tree(root).into_iter().skip(1) {
        total += read(pid).unwrap_or(0);
    }
    Some(total)
}

/// Open file descriptors of one process (entries of `/proc/PID/fd`); `None` if unreadable.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `utime` and `stime` (clock ticks) from a `/proc/PID/task/TID/stat` text.
pub fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // After the command: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The thread name tollgate gives its ledger writer (`tollgate-control`, cut to 15 bytes).
const LEDGER_THREAD: &str = "tollgate-contro";

/// Where a server tree's CPU went, in clock ticks: user, kernel, and the ledger writer's share
/// of both (tollgate only: its SQLite commits and enrichment).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSplit {
    pub user: u64,
    pub kernel: u64,
    pub ledger: u64,
}

impl CpuSplit {
    /// Ticks spent from `before` to `self`, per request, in µs.
    pub fn per_request_us(&self, before: &CpuSplit, requests: u64) -> (f64, f64, f64) {
        let us = |a: u64, b: u64| {
            a.saturating_sub(b) as f64 * 1e6 / ticks_per_second() / requests as f64
        };
        (
            us(self.user, before.user),
            us(self.kernel, before.kernel),
            us(self.ledger, before.ledger),
        )
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User and kernel ticks of every live thread under `root`; `None` if the root is unreadable.
pub fn tree_cpu_split(root: u32) -> Option<CpuSplit> {
    let mut split = CpuSplit::default();
    let mut read_root = false;
    for pid in process_tree(root) {
        let Ok(tasks) = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
            continue;
        };
        read_root |= pid == root;
        for task in tasks.flatten() {
            let Some((user, kernel)) = fs::read_to_string(task.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat_times)
            else {
                continue;
            };
            split.user += user;
            split.kernel += kernel;
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == LEDGER_THREAD {
                split.ledger += user + kernel;
            }
        }
    }
    read_root.then_some(split)
}

/// `OutSegs` of the `Tcp:` lines of `/proc/net/snmp`: TCP segments this host has sent.
pub fn parse_tcp_out_segments(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?.split_whitespace();
    let values = tcp.next()?.split_whitespace();
    let (_, value) = names.zip(values).find(|(name, _)| *name == "OutSegs")?;
    value.parse().ok()
}

/// TCP segments sent on this host so far (every process: on loopback, each one is also received).
pub fn tcp_out_segments() -> Option<u64> {
    parse_tcp_out_segments(&fs::read_to_string("/proc/net/snmp").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_first_field() {
        assert_eq!(parse_schedstat_ns("123456789 2000 42\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_ns(""), None);
        assert_eq!(parse_schedstat_ns("x 1 2"), None);
    }

    #[test]
    fn vmrss_from_status() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(status), Some(4321));
        assert_eq!(parse_vmrss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn ppid_survives_odd_command_names() {
        assert_eq!(parse_stat_ppid("42 (nginx) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_stat_ppid("43 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn stat_times_are_fields_14_and_15() {
        let stat = "42 (tollgate-w0) S 1 42 42 0 -1 4194624 100 0 0 0 317 94 0 0 20 0 1 0";
        assert_eq!(parse_stat_times(stat), Some((317, 94)));
        assert_eq!(
            parse_stat_times("42 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13"),
            Some((11, 12))
        );
        assert_eq!(parse_stat_times("42 (x) S 1"), None);
    }

    #[test]
    fn out_segments_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 2 64\nTcp: RtoAlgorithm RtoMin InSegs OutSegs RetransSegs\nTcp: 1 200 5000 4711 3\nUdp: InDatagrams\nUdp: 9\n";
        assert_eq!(parse_tcp_out_segments(snmp), Some(4711));
        assert_eq!(parse_tcp_out_segments("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn own_cpu_split_counts_this_thread() {
        let me = std::process::id();
        let before = tree_cpu_split(me).expect("own /proc");
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = tree_cpu_split(me).expect("own /proc");
        assert!(after.user + after.kernel > before.user + before.kernel);
        assert_eq!(
            after.ledger, 0,
            "no thread here is tollgate's ledger writer"
        );
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(process_tree(me).contains(&me));
        // Values depend on the machine; only check that /proc answers.
        assert!(tree_rss_kib(me).is_some());
        assert!(fd_count(me).is_some_and(|n| n >= 3));
    }
}
