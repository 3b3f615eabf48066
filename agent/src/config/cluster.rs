//! `cluster:` — many agents, one set of budgets, through Redis (`cluster/`). Validated here into
//! [`ClusterSettings`]; absent, every agent enforces alone.

use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// `redis://host:6379/0` or `rediss://` (TLS): one Redis.
    pub redis: Option<String>,
    /// A Redis Cluster: some of its nodes' URLs.
    pub redis_cluster: Option<Vec<String>>,
    /// Redis behind Sentinels: the master's name and the Sentinels' URLs.
    pub sentinel: Option<SentinelFile>,
    /// This agent's name in the cluster (default: the host name).
    pub node: Option<String>,
    /// Environment variable holding the Redis password (never written in the file).
    pub password_env: Option<String>,
    /// A lease is at most this fraction of a budget's limit (default 0.02).
    pub lease_fraction: Option<f64>,
    /// A lease is sized to this much of the agent's recent spend (default 2000 ms of it).
    pub lease_horizon_ms: Option<u64>,
    /// Unused lease is given back after this long without spend (default 10000).
    pub idle_return_ms: Option<u64>,
    /// While Redis is unreachable and the leases are spent: the fraction of each limit this agent
    /// may still spend alone, once per window (default 0.05).
    pub fallback_share: Option<f64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SentinelFile {
    pub master: String,
    pub nodes: Vec<String>,
}

/// Where the cluster's Redis is (`cluster/conn.rs` connects to it).
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
    Sentinel { master: String, nodes: Vec<String> },
}

/// The validated `cluster:` section.
#[derive(Clone, PartialEq)]
pub struct ClusterSettings {
    /// URLs without the password (that is in `password`).
    pub target: RedisTarget,
    pub password: Option<String>,
    pub node: String,
    pub lease_fraction: f64,
    pub lease_horizon: Duration,
    pub idle_return: Duration,
    pub fallback_share: f64,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("target", &self.target)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("node", &self.node)
            .field("lease_fraction", &self.lease_fraction)
            .field("lease_horizon", &self.lease_horizon)
            .field("idle_return", &self.idle_return)
            .field("fallback_share", &self.fallback_share)
            .finish()
    }
}

impl ClusterSettings {
    /// `url` with the password in it, for the client only (never logged).
    pub fn with_password(&self, url: &str) -> String {
        match (&self.password, url.split_once("://")) {
            (Some(p), Some((scheme, rest))) => {
                let p: String = p
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{scheme}://:{p}@{rest}")
            }
            _ => url.to_string(),
        }
    }

    /// Where Redis is, for messages (no password).
    pub fn describe(&self) -> String {
        match &self.target {
            RedisTarget::Single(url) => url.clone(),
            RedisTarget::Cluster(nodes) => format!("Redis Cluster {}", nodes.join(",")),
            RedisTarget::Sentinel { master, nodes } => {
                format!("master `{master}` of Sentinels {}", nodes.join(","))
            }
        }
    }
}

/// The default node name: `TOLLGATE_NODE_NAME` (the Helm chart sets it to the Kubernetes node
/// name, which outlives pods; a pod's host name changes with every restart), else the host name.
pub(super) fn host_name() -> String {
    if let Some(n) = std::env::var("TOLLGATE_NODE_NAME")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

impl Validator<'_> {
    pub(super) fn cluster(
        &mut self,
        f: Option<&ClusterFile>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ClusterSettings> {
        let f = f?;
        let check = |v: &mut Self, field: &str, url: &str| {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                v.problem(field, "must be a redis:// or rediss:// URL");
            }
            if url
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('@'))
            {
                v.problem(
                    field,
                    "carries credentials; put the password in an environment variable and name it in password_env",
                );
            }
        };
        let target = match (&f.redis, &f.redis_cluster, &f.sentinel) {
            (Some(url), None, None) => {
                check(self, "cluster.redis", url.trim());
                RedisTarget::Single(url.trim().to_string())
            }
            (None, Some(nodes), None) if !nodes.is_empty() => {
                for (i, n) in nodes.iter().enumerate() {
                    check(self, &format!("cluster.redis_cluster[{i}]"), n.trim());
                }
                RedisTarget::Cluster(nodes.iter().map(|n| n.trim().to_string()).collect())
            }
            (None, None, Some(s)) if !s.nodes.is_empty() && !s.master.is_empty() => {
                for (i, n) in s.nodes.iter().enumerate() {
                    check(self, &format!("cluster.sentinel.nodes[{i}]"), n.trim());
                }
                RedisTarget::Sentinel {
                    master: s.master.clone(),
                    nodes: s.nodes.iter().map(|n| n.trim().to_string()).collect(),
                }
            }
            _ => {
                self.problem(
                    "cluster",
                    "needs exactly one of `redis` (a URL), `redis_cluster` (node URLs) or \
                     `sentinel` ({master, nodes})",
                );
                RedisTarget::Single(String::new())
            }
        };
        let password = f.password_env.as_deref().and_then(|name| {
            let v = env(name);
            if v.is_none() {
                self.problem(
                    "cluster.password_env",
                    format!("the environment variable `{name}` is not set"),
                );
            }
            v
        });
        let node = f.node.clone().unwrap_or_else(host_name);
        if node.is_empty()
            || node.len() > 64
            || node.chars().any(|c| c.is_control() || c == ' ' || c == '|')
        {
            self.problem(
                "cluster.node",
                "must be 1 to 64 characters without spaces, `|` or control characters",
            );
        }
        let out = ClusterSettings {
            target,
            password,
            node,
            lease_fraction: f.lease_fraction.unwrap_or(0.02),
            lease_horizon: Duration::from_millis(f.lease_horizon_ms.unwrap_or(2000)),
            idle_return: Duration::from_millis(f.idle_return_ms.unwrap_or(10_000)),
            fallback_share: f.fallback_share.unwrap_or(0.05),
        };
        if !(out.lease_fraction > 0.0 && out.lease_fraction <= 1.0) {
            self.problem("cluster.lease_fraction", "must be above 0 and at most 1");
        }
        if !(0.0..=1.0).contains(&out.fallback_share) {
            self.problem("cluster.fallback_share", "must be between 0 and 1");
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const PROVIDERS: &str = "providers:\n  - {name: p, kind: openai, base_url: \"http://127.0.0.1:9\"}\nmodels:\n  - {name: m, provider: p}\n";

    #[test]
    fn the_cluster_section_is_read_with_defaults_and_its_secret_from_the_environment() {
        let env = |n: &str| (n == "REDIS_PW").then(|| "s3cr/t".to_string());
        let c = Config::from_yaml(
            &format!("{PROVIDERS}cluster: {{redis: \"redis://10.0.0.5:6379/2\", node: gpu-7, password_env: REDIS_PW}}\n"),
            &env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = c.cluster.expect("cluster settings");
        assert_eq!(s.node, "gpu-7");
        assert_eq!(s.lease_fraction, 0.02);
        assert_eq!(
            s.target,
            super::RedisTarget::Single("redis://10.0.0.5:6379/2".into())
        );
        assert_eq!(
            s.with_password("redis://10.0.0.5:6379/2"),
            "redis://:s3cr%2Ft@10.0.0.5:6379/2"
        );
        let c = Config::from_yaml(
            &format!("{PROVIDERS}cluster: {{sentinel: {{master: tg, nodes: [\"redis://10.0.0.1:26379\"]}}}}\n"),
            &env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            c.cluster.map(|c| c.target),
            Some(super::RedisTarget::Sentinel { .. })
        ));
        assert!(
            !format!("{s:?}").contains("s3cr"),
            "the password stays out of Debug"
        );
        let none = Config::from_yaml(PROVIDERS, &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(none.cluster.is_none());
    }

    #[test]
    fn cluster_problems_name_their_field() {
        let errs = Config::from_yaml(
            &format!("{PROVIDERS}cluster: {{redis: \"http://u:p@x\", password_env: NOPE, lease_fraction: 0, fallback_share: 2, node: \"a b\"}}\n"),
            &|_| None,
        )
        .unwrap_err()
        .0;
        let paths: Vec<&str> = errs.iter().map(|p| p.path.as_str()).collect();
        let both = Config::from_yaml(
            &format!(
                "{PROVIDERS}cluster: {{redis: \"redis://a\", redis_cluster: [\"redis://b\"]}}\n"
            ),
            &|_| None,
        )
        .unwrap_err()
        .0;
        assert!(both.iter().any(|p| p.path == "cluster"), "{both:?}");
        for want in [
            "cluster.redis",
            "cluster.password_env",
            "cluster.node",
            "cluster.lease_fraction",
            "cluster.fallback_share",
        ] {
            assert!(paths.contains(&want), "{want} in {paths:?}");
        }
    }
}
