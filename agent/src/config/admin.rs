//! Validation of the `admin` section: the operators' listener and its token. Split from
//! `validate.rs` so each file stays about one part of the config.

use std::net::SocketAddr;

use super::file::AdminFile;
use super::validate::Validator;

/// Shortest admin token accepted: long enough that guessing it over the network is hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin listener, when configured.
#[derive(Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// The bearer token, read from `token_env` at load time. Never logged (see `Debug`).
    pub token: String,
    pub token_env: String,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

impl Validator<'_> {
    /// Returns the admin listener (if any) and whether the client port serves `/metrics`.
    pub(super) fn admin(
        &mut self,
        a: &AdminFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Option<AdminSettings>, bool) {
        let metrics_on_client_port = a.metrics_on_client_port.unwrap_or(true);
        let Some(listen) = &a.listen else {
            if a.token_env.is_some() {
                self.problem("admin.token_env", "has no effect without admin.listen");
            }
            return (None, metrics_on_client_port);
        };
        let addr = match listen.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    "admin.listen",
                    format!("`{listen}` is not an address like 127.0.0.1:4001"),
                );
                None
            }
        };
        let token = match &a.token_env {
            None => {
                self.problem(
                    "admin.token_env",
                    "is required with admin.listen (the admin API is never open without a token)",
                );
                None
            }
            Some(var) => match env(var) {
                Some(t) if t.len() >= MIN_TOKEN_LEN => Some((var.clone(), t)),
                Some(_) => {
                    self.problem(
                        "admin.token_env",
                        format!("the token in `{var}` is shorter than {MIN_TOKEN_LEN} characters"),
                    );
                    None
                }
                None => {
                    self.problem(
                        "admin.token_env",
                        format!("environment variable `{var}` is not set"),
                    );
                    None
                }
            },
        };
        match (addr, token) {
            (Some(listen), Some((token_env, token))) => (
                Some(AdminSettings {
                    listen,
                    token,
                    token_env,
                }),
                metrics_on_client_port,
            ),
            _ => (None, metrics_on_client_port),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn env(name: &str) -> Option<String> {
        match name {
            "GOOD" => Some("0123456789abcdef-token".into()),
            "SHORT" => Some("short".into()),
            _ => None,
        }
    }

    #[test]
    fn admin_section() {
        let c = Config::from_yaml("listen: 127.0.0.1:4000\n", &env).unwrap();
        assert!(c.admin.is_none() && c.metrics_on_client_port);
        let c = Config::from_yaml(
            "admin: { listen: 127.0.0.1:4001, token_env: GOOD, metrics_on_client_port: false }\n",
            &env,
        )
        .unwrap();
        let a = c.admin.clone().unwrap();
        assert_eq!(a.listen.port(), 4001);
        assert!(!c.metrics_on_client_port);
        assert!(
            !format!("{a:?}").contains("token-"),
            "the token is never printed"
        );
        for (yaml, needle) in [
            ("admin: { listen: 127.0.0.1:4001 }\n", "is required"),
            (
                "admin: { listen: 127.0.0.1:4001, token_env: SHORT }\n",
                "shorter than",
            ),
            (
                "admin: { listen: 127.0.0.1:4001, token_env: NOPE }\n",
                "is not set",
            ),
            (
                "admin: { listen: nowhere, token_env: GOOD }\n",
                "not an address",
            ),
        ] {
            let e = Config::from_yaml(yaml, &env).unwrap_err().to_string();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
