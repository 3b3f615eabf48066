//! Runtime types for the kernel side of the configuration: whether to load the eBPF programs
//! (`kernel`), which destinations to intercept (`intercept`) and how each intercepted
//! destination is routed, and the attribution rules that map kernel identity (cgroup, comm,
//! container, pod) onto the identity envelope (`attribution`).
//!
//! Why here: validation (`validate.rs`) builds these once at load; the route phase reads
//! [`InterceptRoute`] on the hot path (a scan of a list as long as `intercept`, usually one or
//! two entries), and the control thread evaluates [`AttributionRule`]s off the hot path.

use crate::identity::Identity;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::api::Wire;

/// `kernel.enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Load the programs when the host allows it; otherwise run without them (logged once).
    Auto,
    /// Never load them.
    Off,
}

impl KernelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelMode::Auto => "auto",
            KernelMode::Off => "off",
        }
    }
}

/// `kernel:` validated.
#[derive(Debug, Clone)]
pub struct KernelSettings {
    pub enabled: KernelMode,
    pub pin_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
}

impl Default for KernelSettings {
    fn default() -> Self {
        KernelSettings {
            enabled: KernelMode::Auto,
            pin_dir: PathBuf::from(crate::kernel::DEFAULT_PIN_DIR),
            cgroup_root: None,
        }
    }
}

/// Where requests on a connection redirected from `dst` go: a provider per wire family. Each
/// is a configured provider at exactly that address (and of that kind) when there is one, else
/// an implicit passthrough provider (`Provider::implicit`) created at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptRoute {
    pub dst: SocketAddr,
    /// Provider index for OpenAI-shaped requests.
    pub openai: usize,
    /// Provider index for `/v1/messages`.
    pub anthropic: usize,
}

impl InterceptRoute {
    pub fn provider_for(&self, wire: Wire) -> usize {
        match wire {
            Wire::OpenAi => self.openai,
            Wire::Anthropic => self.anthropic,
        }
    }
}

/// `attribution.anonymous`: what kernel identity does for requests without identity headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Headers win; the first matching rule fills the fields the headers left empty.
    AttributeByKernel,
    /// Rules are not applied (kernel facts are still recorded in the ledger).
    LeaveAnonymous,
}

/// `attribution:` validated.
#[derive(Debug, Clone)]
pub struct AttributionSettings {
    pub anonymous: Anonymous,
    pub rules: Vec<AttributionRule>,
}

impl Default for AttributionSettings {
    fn default() -> Self {
        AttributionSettings {
            anonymous: Anonymous::AttributeByKernel,
            rules: Vec::new(),
        }
    }
}

/// What the kernel (and the cgroup path) says about a client, for rule matching.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelFacts<'a> {
    pub cgroup_path: Option<&'a str>,
    pub comm: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
}

/// One rule: every given glob must match its fact (a missing fact never matches).
#[derive(Debug, Clone, Default)]
pub struct AttributionRule {
    pub cgroup: Option<Glob>,
    pub comm: Option<Glob>,
    pub container: Option<Glob>,
    pub pod: Option<Glob>,
    /// The identity fields this rule fills (only those the request left empty).
    pub fills: Identity,
}

impl AttributionRule {
    pub fn matches(&self, facts: &KernelFacts<'_>) -> bool {
        let one = |glob: &Option<Glob>, fact: Option<&str>| match glob {
            None => true,
            Some(g) => fact.is_some_and(|f| g.matches(f)),
        };
        one(&self.cgroup, facts.cgroup_path)
            && one(&self.comm, facts.comm)
            && one(&self.container, facts.container_id)
            && one(&self.pod, facts.pod_uid)
    }
}

impl AttributionSettings {
    /// The first rule that matches, if rules apply at all.
    pub fn rule_for(&self, facts: &KernelFacts<'_>) -> Option<&AttributionRule> {
        if self.anonymous == Anonymous::LeaveAnonymous {
            return None;
        }
        self.rules.iter().find(|r| r.matches(facts))
    }
}

/// A shell-style pattern: `*` matches any run of characters (`/` included), `?` one character,
/// everything else itself. No escapes or classes; configuration values rarely need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    source: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.chars().collect(),
            source: pattern.to_string(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern. Linear backtracking on the last `*`, so
    /// O(pattern × text) at worst.
    pub fn matches(&self, text: &str) -> bool {
        let p = &self.pattern;
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(c) if *c == '?' || *c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_stars_and_questions() {
        let g = Glob::new("/system.slice/batch-*.scope");
        assert!(g.matches("/system.slice/batch-42.scope"));
        assert!(g.matches("/system.slice/batch-.scope"));
        assert!(!g.matches("/system.slice/batch-42.service"));
        assert!(!g.matches("/user.slice/batch-1.scope"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("*").matches("/a/b/c"));
        assert!(Glob::new("py*").matches("python3"));
        assert!(Glob::new("python?").matches("python3"));
        assert!(!Glob::new("python?").matches("python"));
        assert!(Glob::new("a*b*c").matches("aXbYbZc"));
        assert!(!Glob::new("a*b*c").matches("aXbYbZ"));
        assert!(Glob::new("exact").matches("exact"));
        assert!(!Glob::new("exact").matches("exactly"));
        assert!(Glob::new("*.scope").matches("/kubepods/x/cri-containerd-ab.scope"));
        assert!(Glob::new("ü?").matches("üx"));
    }

    #[test]
    fn rules_need_every_given_fact() {
        let rule = AttributionRule {
            cgroup: Some(Glob::new("/batch/*")),
            comm: Some(Glob::new("python*")),
            fills: Identity {
                team: Some("batch".into()),
                ..Identity::default()
            },
            ..AttributionRule::default()
        };
        let mut facts = KernelFacts {
            cgroup_path: Some("/batch/job-1"),
            comm: Some("python3"),
            ..KernelFacts::default()
        };
        assert!(rule.matches(&facts));
        facts.comm = Some("curl");
        assert!(!rule.matches(&facts));
        facts.comm = Some("python3");
        facts.cgroup_path = None;
        assert!(!rule.matches(&facts), "an unknown cgroup never matches");

        let settings = AttributionSettings {
            anonymous: Anonymous::AttributeByKernel,
            rules: vec![
                AttributionRule {
                    pod: Some(Glob::new("*")),
                    fills: Identity {
                        team: Some("pods".into()),
                        ..Identity::default()
                    },
                    ..AttributionRule::default()
                },
                rule.clone(),
            ],
        };
        facts.cgroup_path = Some("/batch/job-1");
        assert_eq!(
            settings
                .rule_for(&facts)
                .and_then(|r| r.fills.team.as_deref()),
            Some("batch")
        );
        let off = AttributionSettings {
            anonymous: Anonymous::LeaveAnonymous,
            ..settings
        };
        assert!(off.rule_for(&facts).is_none());
    }
}
