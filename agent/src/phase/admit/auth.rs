//! Who is asking: the virtual key (either SDK's header), and the rule for unmetered POSTs on
//! intercepted connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::api::Wire;
use crate::client::ClientConn;
use crate::error::{ErrorKind, GateError};
use crate::governance::keys::{KeyEntry, KEY_PREFIX};
use crate::governance::policy::AuthMode;
use crate::governance::window::now_ms;
use crate::governance::Governor;

/// On an intercepted connection under `auth: {mode: keys}`, a POST to a path Tollgate does not
/// meter (an engine's native `/generate`, `/v1/score`, ...) would spend tokens outside every
/// limit and budget: refused (403 `unmetered_endpoint`) unless `unmetered_post_paths` lists it.
/// GETs and other methods still pass through to the original server.
pub fn unmetered_post(
    policy: &crate::governance::policy::Policy,
    head: &crate::http::request::RequestHead,
) -> Option<GateError> {
    let path = head.path();
    let allowed = policy.unmetered_post_paths.iter().any(|p| p == path);
    (policy.auth == AuthMode::Keys && head.method == crate::http::request::Method::Post && !allowed)
        .then(|| {
            GateError::new(
                ErrorKind::Forbidden {
                    code: "unmetered_endpoint",
                },
                format!("POST {path} is not an endpoint Tollgate meters, so it cannot be governed; use the OpenAI or Anthropic API paths (or list it in `unmetered_post_paths`)."),
            )
        })
}

/// The request's virtual key: `None` when none is needed (open mode, intercepted connections).
/// Also used by `GET /v1/models`, which lists only what the key may use.
pub fn authenticate(
    gov: &Governor,
    client: &ClientConn,
    head: &crate::http::request::RequestHead,
    wire: Wire,
    mode: AuthMode,
) -> Result<Option<Arc<KeyEntry>>, GateError> {
    let bearer = head
        .header_str("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if let Some(result) = on_behalf(gov, client, head, bearer) {
        return result;
    }
    let api_key = head.header_str("x-api-key").map(str::trim);
    // Ours wherever it is (a client may send a provider key in the other header), else
    // whatever was sent.
    let credential = [bearer, api_key]
        .into_iter()
        .flatten()
        .find(|c| c.starts_with(KEY_PREFIX))
        .or(bearer)
        .or(api_key);
    let fail = |code: &'static str, message: String| {
        gov.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        GateError::new(ErrorKind::Unauthorized { code }, message)
    };
    let intercepted = client.original_dst().is_some();
    let secret = match credential {
        Some(c) if c.starts_with(KEY_PREFIX) => c,
        // Intercepted clients keep their own credentials for the server they addressed; in
        // open mode a credential that is not ours is ignored.
        _ if intercepted || mode == AuthMode::Open => return Ok(None),
        Some(c) => {
            return Err(fail(
                "invalid_api_key",
                format!(
                    "Incorrect API key provided: {}. Use a Tollgate virtual key (tg-...).",
                    redact(c)
                ),
            ))
        }
        None => {
            let hint = match wire {
                Wire::OpenAi => "Authorization: Bearer tg-...",
                Wire::Anthropic => "x-api-key: tg-...",
            };
            return Err(fail(
                "missing_api_key",
                format!(
                    "You didn't provide an API key. Send your Tollgate virtual key as `{hint}`."
                ),
            ));
        }
    };
    let table = gov.keys.load();
    let Some(key) = table.lookup(secret) else {
        return Err(fail(
            "invalid_api_key",
            format!(
                "Incorrect API key provided: {}. The key is unknown or was revoked.",
                redact(secret)
            ),
        ));
    };
    if !key.spec.enabled {
        return Err(fail(
            "key_disabled",
            format!("The key {} is disabled.", key.prefix),
        ));
    }
    if key.spec.expires_at_ms.is_some_and(|t| t <= now_ms()) {
        return Err(fail(
            "key_expired",
            format!("The key {} has expired.", key.prefix),
        ));
    }
    // The peer's address costs a syscall on a connection's first ask: only keys with an
    // allow-list ask.
    if key.spec.allowed_ips.is_empty() {
        return Ok(Some(key.clone()));
    }
    let peer = client.peer_ip();
    if !peer.is_some_and(|ip| key.ip_allowed(ip)) {
        gov.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        return Err(GateError::new(
            ErrorKind::Forbidden {
                code: "ip_not_allowed",
            },
            format!(
                "The key {} may not be used from {}.",
                key.prefix,
                peer.map_or_else(
                    || "an address the socket no longer reports".into(),
                    |ip| ip.to_string()
                )
            ),
        ));
    }
    Ok(Some(key.clone()))
}

/// Whether a connection may carry the batch runner's requests: from a loopback address (IPv4
/// or IPv4-mapped, as [`ClientConn::peer_ip`] gives it) and not redirected by the kernel (an
/// intercepted local client's connection comes from loopback too).
fn runner_peer(peer: Option<std::net::IpAddr>, redirected: bool) -> bool {
    peer.is_some_and(|p| p.is_loopback()) && !redirected
}

/// The batch runner's requests: `Authorization: Bearer <internal token>` plus
/// `x-tollgate-on-behalf-of: <key id>`, accepted only from a loopback peer on a connection that
/// was not intercepted, the token compared in constant time. The key is then found by its id
/// and must still be usable (a key disabled, expired or revoked since the batch was created
/// fails that line with 401, like its own requests would). The key's IP allowlist is not
/// applied: it was checked when the batch was created, and the peer here is the agent itself.
/// `None`: not such a request (the header is ignored and the credential checked as usual).
fn on_behalf(
    gov: &Governor,
    client: &ClientConn,
    head: &crate::http::request::RequestHead,
    bearer: Option<&str>,
) -> Option<Result<Option<Arc<KeyEntry>>, GateError>> {
    // Cheapest first: every request with a bearer passes here.
    let token = gov.internal_token.get()?;
    let bearer = bearer.filter(|b| b.starts_with(crate::batch::INTERNAL_PREFIX))?;
    let id = head.header_str("x-tollgate-on-behalf-of")?.trim();
    if !runner_peer(client.peer_ip(), client.original_dst().is_some()) {
        return None;
    }
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        token.as_bytes(),
        bearer.as_bytes(),
    )) {
        return None;
    }
    let fail = |code: &'static str, message: String| {
        gov.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        Some(Err(GateError::new(
            ErrorKind::Unauthorized { code },
            message,
        )))
    };
    let table = gov.keys.load();
    let Some(key) = table.by_id(id) else {
        return fail(
            "invalid_api_key",
            format!("The key {id} that owns this batch is unknown or was revoked."),
        );
    };
    if !key.spec.enabled {
        return fail(
            "key_disabled",
            format!("The key {} is disabled.", key.prefix),
        );
    }
    if key.spec.expires_at_ms.is_some_and(|t| t <= now_ms()) {
        return fail(
            "key_expired",
            format!("The key {} has expired.", key.prefix),
        );
    }
    Some(Ok(Some(key.clone())))
}

/// `sk-abc...wxyz`: enough to recognise a key, never the key.
fn redact(c: &str) -> String {
    let chars: Vec<char> = c.chars().collect();
    if chars.len() <= 10 {
        return "***".into();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner's credential: honoured only with the exact token, from a loopback peer, for
    /// a key that exists and is usable; anything else is an ordinary (failing) credential.
    #[test]
    fn on_behalf_needs_the_token_a_loopback_peer_and_a_usable_key() {
        use crate::governance::keys::{generate, KeyRecord, KeySpec};
        let gov = Governor::for_tests();
        let store =
            crate::governance::store::Store::open(gov.data_dir()).unwrap_or_else(|e| panic!("{e}"));
        for (id, enabled) in [("k_batch", true), ("k_off", false)] {
            let new = generate().unwrap_or_else(|e| panic!("{e}"));
            let rec = KeyRecord {
                id: id.into(),
                prefix: new.prefix.clone(),
                spec: KeySpec {
                    team: Some("t".into()),
                    enabled,
                    ..KeySpec::default()
                },
                created_ms: 0,
                updated_ms: 0,
                revoked_ms: None,
            };
            store
                .insert_key(&rec, &new.hash)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        gov.reload_from(&store).unwrap_or_else(|e| panic!("{e}"));
        let token = crate::batch::internal_token().unwrap_or_else(|e| panic!("{e}"));
        let _ = gov.internal_token.set(token.clone());
        let head = |bearer: &str, id: Option<&str>| {
            let mut raw =
                format!("POST /v1/chat/completions HTTP/1.1\r\nauthorization: Bearer {bearer}\r\n");
            if let Some(id) = id {
                raw.push_str(&format!("x-tollgate-on-behalf-of: {id}\r\n"));
            }
            raw.push_str("\r\n");
            crate::http::request::RequestHead::parse(bytes::Bytes::from(raw), 100)
                .unwrap_or_else(|e| panic!("{e:?}"))
        };
        // Real connections, seen from the accepting side as the agent sees them: over IPv4,
        // and to a dual-stack IPv6 listener, where the same client is ::ffff:127.0.0.1.
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let v6 = std::net::TcpListener::bind("[::]:0").ok();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async move {
            let accepted = |listener: &std::net::TcpListener| {
                let port = listener
                    .local_addr()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .port();
                let _client = std::net::TcpStream::connect(("127.0.0.1", port))
                    .unwrap_or_else(|e| panic!("{e}"));
                let (s, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
                let s = monoio::net::TcpStream::from_std(s).unwrap_or_else(|e| panic!("{e}"));
                (ClientConn::new(s), _client)
            };
            let (local, _a) = accepted(&v4);
            assert_eq!(local.peer_ip(), Some(std::net::Ipv4Addr::LOCALHOST.into()));
            let mut conns = vec![&local];
            let mapped = v6.as_ref().map(accepted);
            if let Some((m, _)) = &mapped {
                assert_eq!(m.peer_ip(), Some(std::net::Ipv4Addr::LOCALHOST.into()));
                conns.push(m);
            }
            // Remote and redirected peers cannot be made on one host; the rule itself:
            let remote: std::net::IpAddr = "10.0.0.7".parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(!runner_peer(Some(remote), false));
            assert!(!runner_peer(None, false));
            assert!(!runner_peer(local.peer_ip(), true));
            let check = |c: &ClientConn, bearer: &str, id: Option<&str>| {
                authenticate(&gov, c, &head(bearer, id), Wire::OpenAi, AuthMode::Keys)
            };
            let code = |r: Result<Option<Arc<KeyEntry>>, GateError>| match r {
                Ok(k) => panic!("accepted as {:?}", k.map(|k| k.id.clone())),
                Err(e) => e.metric_reason(),
            };
            for c in conns {
                let key = check(c, &token, Some("k_batch"))
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("no key"));
                assert_eq!(key.id, "k_batch");
            }
            let mut wrong = token.clone();
            wrong.pop();
            wrong.push('x');
            assert_eq!(
                code(check(&local, &wrong, Some("k_batch"))),
                "invalid_api_key"
            );
            assert_eq!(code(check(&local, &token, None)), "invalid_api_key");
            assert_eq!(code(check(&local, &token, Some("k_off"))), "key_disabled");
            assert_eq!(
                code(check(&local, &token, Some("k_gone"))),
                "invalid_api_key"
            );
        });
    }

    #[test]
    fn redaction_never_shows_the_middle() {
        assert_eq!(redact("sk-1234567890abcdef"), "sk-123...cdef");
        assert_eq!(redact("short"), "***");
    }
}
