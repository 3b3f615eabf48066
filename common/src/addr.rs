//! `struct tg_addr_key`: a socket address as the kernel programs key it (tg_intercept,
//! tg_listen, tg_attr).
//!
//! IPv4 addresses sit in `addr[0..4]` with the remaining bytes zero; an IPv4-mapped IPv6
//! address is stored as IPv4, so a dual-stack socket and an IPv4 socket produce the same key.
//! An all-zero address is its family's wildcard (only meaningful in tg_listen). Conversions to
//! and from `SocketAddr` live in the agent, since this crate is `no_std`.

use crate::{AF_INET, AF_INET6};

/// Key of tg_intercept, tg_listen and tg_attr. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// Address bytes in network order (IPv4 in the first four).
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

impl AddrKey {
    /// Key for an IPv4 address (octets in network order) and port.
    pub const fn v4(octets: [u8; 4], port: u16) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self {
            addr,
            port,
            family: AF_INET,
        }
    }

    /// Key for an IPv6 address (octets in network order) and port; IPv4-mapped addresses
    /// (`::ffff:a.b.c.d`) become IPv4 keys, as the kernel programs make them.
    pub fn v6(octets: [u8; 16], port: u16) -> Self {
        if octets[..10].iter().all(|&b| b == 0) && octets[10] == 0xff && octets[11] == 0xff {
            return Self::v4([octets[12], octets[13], octets[14], octets[15]], port);
        }
        Self {
            addr: octets,
            port,
            family: AF_INET6,
        }
    }

    /// Whether the address part is all zero (the wildcard address of its family).
    pub fn is_unspecified(&self) -> bool {
        self.addr.iter().all(|&b| b == 0)
    }
}

crate::impl_pod!(AddrKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_becomes_v4() {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(AddrKey::v6(m, 80), AddrKey::v4([127, 0, 0, 1], 80));
        let mut lo6 = [0u8; 16];
        lo6[15] = 1;
        assert_eq!(AddrKey::v6(lo6, 80).family, AF_INET6);
    }
}
