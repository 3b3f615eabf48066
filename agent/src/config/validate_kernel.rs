//! Validation of the kernel side's configuration: `kernel`, `intercept` and `attribution`, and
//! the routing of intercepted destinations to providers (configured or implicit). Split from
//! `validate.rs` so each file stays about one part of the config.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::file::{AttributionFile, KernelFile, RuleFile};
use super::kernel::{
    Anonymous, AttributionRule, AttributionSettings, Glob, InterceptRoute, KernelMode,
    KernelSettings,
};
use super::validate::{authority_host, Provider, ProviderKind, Validator, INTERCEPTED};
use crate::identity::Identity;

impl Validator<'_> {
    pub(super) fn kernel(&mut self, k: &KernelFile) -> KernelSettings {
        let mut out = KernelSettings::default();
        match &k.enabled {
            None => {}
            Some(serde_yaml_ng::Value::Bool(true)) => out.enabled = KernelMode::Auto,
            Some(serde_yaml_ng::Value::Bool(false)) => out.enabled = KernelMode::Off,
            Some(serde_yaml_ng::Value::String(s)) if s == "auto" => out.enabled = KernelMode::Auto,
            Some(serde_yaml_ng::Value::String(s)) if s == "off" => out.enabled = KernelMode::Off,
            Some(other) => {
                let shown = serde_yaml_ng::to_string(other).unwrap_or_default();
                self.problem(
                    "kernel.enabled",
                    format!("`{}` is not one of auto, off", shown.trim()),
                );
            }
        }
        if let Some(dir) = &k.pin_dir {
            let path = PathBuf::from(dir);
            if !path.is_absolute() {
                self.problem(
                    "kernel.pin_dir",
                    format!("`{dir}` must be an absolute path on bpffs, like /sys/fs/bpf/tollgate"),
                );
            }
            out.pin_dir = path;
        }
        if let Some(dir) = &k.cgroup_root {
            let path = PathBuf::from(dir);
            if !path.is_absolute() {
                self.problem(
                    "kernel.cgroup_root",
                    format!("`{dir}` must be an absolute path to a cgroup v2 mount"),
                );
            }
            out.cgroup_root = Some(path);
        }
        out
    }

    pub(super) fn intercepts(
        &mut self,
        items: Vec<serde_yaml_ng::Value>,
        listen: SocketAddr,
    ) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (i, raw) in items.into_iter().enumerate() {
            let path = format!("intercept[{i}]");
            let text = match &raw {
                serde_yaml_ng::Value::String(s) => s.clone(),
                serde_yaml_ng::Value::Sequence(_) => {
                    self.problem(
                        path,
                        "an IPv6 address must be quoted in YAML: \"[::1]:8000\"",
                    );
                    continue;
                }
                other => serde_yaml_ng::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            let Ok(addr) = text.parse::<SocketAddr>() else {
                self.problem(
                    path,
                    format!("`{text}` is not an address like 127.0.0.1:8000 or \"[::1]:8000\""),
                );
                continue;
            };
            let addr = canonical(addr);
            if addr.ip().is_unspecified() || addr.port() == 0 {
                self.problem(
                    path,
                    format!("`{text}` must name one address and port, not a wildcard"),
                );
                continue;
            }
            let loops = addr == canonical(listen)
                || (listen.ip().is_unspecified()
                    && listen.port() == addr.port()
                    && (listen.is_ipv6() || addr.is_ipv4()));
            if loops {
                self.problem(
                    path,
                    format!(
                        "`{text}` is the agent's own listen address; redirecting it would loop"
                    ),
                );
                continue;
            }
            if out.contains(&addr) {
                self.problem(path, format!("`{text}` is listed twice"));
                continue;
            }
            out.push(addr);
        }
        out
    }

    pub(super) fn attribution(&mut self, raw: Option<serde_yaml_ng::Value>) -> AttributionSettings {
        let mut out = AttributionSettings::default();
        let (rules, rules_path) = match raw {
            None | Some(serde_yaml_ng::Value::Null) => return out,
            Some(serde_yaml_ng::Value::Sequence(items)) => (items, "attribution".to_string()),
            Some(v @ serde_yaml_ng::Value::Mapping(_)) => {
                let Some(f) = self.item::<AttributionFile>("attribution", v) else {
                    return out;
                };
                match f.anonymous.as_deref() {
                    None | Some("attribute_by_kernel") => {}
                    Some("leave_anonymous") => out.anonymous = Anonymous::LeaveAnonymous,
                    Some(other) => self.problem(
                        "attribution.anonymous",
                        format!("`{other}` is not one of attribute_by_kernel, leave_anonymous"),
                    ),
                }
                (f.rules, "attribution.rules".to_string())
            }
            Some(_) => {
                self.problem(
                    "attribution",
                    "must be a list of rules or a map with `anonymous` and `rules`",
                );
                return out;
            }
        };
        for (i, raw) in rules.into_iter().enumerate() {
            let path = format!("{rules_path}[{i}]");
            let Some(r) = self.item::<RuleFile>(&path, raw) else {
                continue;
            };
            let m = &r.matches;
            if m.cgroup.is_none() && m.comm.is_none() && m.container.is_none() && m.pod.is_none() {
                self.problem(
                    format!("{path}.match"),
                    "needs at least one of cgroup, comm, container, pod",
                );
                continue;
            }
            let fills = Identity {
                team: r.team,
                project: r.project,
                user: r.user,
                session: r.session,
                workflow: r.workflow,
                cost_center: r.cost_center,
            };
            if fills.is_empty() {
                self.problem(
                    path,
                    "sets no identity field (team, project, user, session, workflow, cost_center)",
                );
                continue;
            }
            let glob = |g: &Option<String>| g.as_deref().map(Glob::new);
            out.rules.push(AttributionRule {
                cgroup: glob(&m.cgroup),
                comm: glob(&m.comm),
                container: glob(&m.container),
                pod: glob(&m.pod),
                fills,
            });
        }
        out
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, the way the kernel programs key them.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Whether a configured provider's address is exactly `dst` (an IP literal, or `localhost`
/// for a loopback destination; other host names are not resolved for this).
fn provider_at(p: &Provider, dst: SocketAddr) -> bool {
    if p.port != dst.port() {
        return false;
    }
    match p.host.parse::<IpAddr>() {
        Ok(ip) => canonical(SocketAddr::new(ip, p.port)) == dst,
        Err(_) => p.host.eq_ignore_ascii_case("localhost") && dst.ip().is_loopback(),
    }
}

/// Routes every intercepted destination, appending implicit providers where needed.
pub(super) fn intercept_routes(
    intercept: &[SocketAddr],
    providers: &mut Vec<(Provider, String)>,
) -> Vec<InterceptRoute> {
    let mut routes = Vec::with_capacity(intercept.len());
    for dst in intercept {
        let mut pick = |kind: ProviderKind| {
            if let Some(i) = providers
                .iter()
                .position(|(p, _)| !p.implicit && p.kind == kind && provider_at(p, *dst))
            {
                return i;
            }
            let host = dst.ip().to_string();
            providers.push((
                Provider {
                    name: INTERCEPTED.to_string(),
                    kind,
                    tls: false,
                    host_header: format!("{}:{}", authority_host(&host), dst.port()),
                    host,
                    port: dst.port(),
                    base_path: String::new(),
                    api_key: None,
                    ca_file: None,
                    anthropic_version: "2023-06-01".into(),
                    implicit: true,
                    // The client's own credentials go there, so its organization headers do too.
                    forward_organization_headers: true,
                    max_request_headers: super::validate::DEFAULT_MAX_REQUEST_HEADERS,
                    // The client chose that destination; egress rules govern routed traffic.
                    public: false,
                    health_check: None,
                    responses_via_chat: false,
                },
                format!("intercept[{dst}]"),
            ));
            providers.len() - 1
        };
        let openai = pick(ProviderKind::OpenAi);
        let anthropic = pick(ProviderKind::Anthropic);
        routes.push(InterceptRoute {
            dst: *dst,
            openai,
            anthropic,
        });
    }
    routes
}
