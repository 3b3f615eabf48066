//! Provider address resolution, done on the control thread and published to workers through
//! `ArcSwap`, because `getaddrinfo` blocks and a worker must never block.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Provider;

/// Current addresses of every provider, indexed like `Config::providers`.
pub struct Resolved {
    addrs: Vec<ArcSwap<Vec<SocketAddr>>>,
}

impl Resolved {
    /// Resolves every provider once (blocking; call off the workers).
    pub fn new(providers: &[Provider]) -> Resolved {
        let r = Resolved {
            addrs: providers
                .iter()
                .map(|_| ArcSwap::from_pointee(Vec::new()))
                .collect(),
        };
        r.refresh(providers);
        r
    }

    /// Re-resolves all providers; keeps the old addresses when resolution fails.
    pub fn refresh(&self, providers: &[Provider]) {
        for (slot, p) in self.addrs.iter().zip(providers) {
            match (p.host.as_str(), p.port).to_socket_addrs() {
                Ok(list) => {
                    let list: Vec<SocketAddr> = list.collect();
                    if !list.is_empty() && **slot.load() != list {
                        slot.store(Arc::new(list));
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %p.name, host = %p.host, error = %e, "cannot resolve provider")
                }
            }
        }
    }

    pub fn get(&self, provider: usize) -> Arc<Vec<SocketAddr>> {
        self.addrs
            .get(provider)
            .map(|a| a.load_full())
            .unwrap_or_default()
    }
}
