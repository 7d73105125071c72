//! Which addresses a push may go to. A device chooses its endpoint URL, so without a filter it
//! could make the relay call its own internal network: every address a name resolves to is
//! checked before the client may connect to it (the client connects only to the addresses that
//! pass, so a name cannot be re-resolved to something else between the check and the connect),
//! and an address written in the URL itself is checked before the request is made.

use std::error::Error;
use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The resolver of the push client: the system's, less the addresses the relay may not
/// contact (unless told to allow them).
#[derive(Clone, Copy, Debug)]
pub(super) struct PublicResolver {
    /// Whether non-public addresses are kept (tests on loopback).
    pub(super) allow_private: bool,
}

/// A name that resolves only to addresses the relay does not contact.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("push endpoint is not a public address")]
pub(super) struct NotPublic;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            // Port 0: the client puts the URL's port (or the scheme's) in its place.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(NotPublic) as Box<dyn Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether an address is one the relay may send a push to.
///
/// IPv4: not "this network" (0/8), loopback, private (RFC 1918), shared (RFC 6598), link-local,
/// IETF protocol assignments (192.0.0.0/24), documentation, benchmarking, the 6to4 relay anycast
/// (192.88.99.0/24), multicast, reserved or broadcast.
///
/// IPv6: not unspecified, loopback, IPv4-compatible (`::a.b.c.d`, deprecated), NAT64 (64:ff9b::/96
/// and the local-use 64:ff9b:1::/48: they reach IPv4 addresses through a translator, private ones
/// included), discard-only (100::/64), Teredo (2001::/32) and 6to4 (2002::/16) (both carry an IPv4
/// address), documentation (2001:db8::/32), unique-local (fc00::/7), site-local (fec0::/10,
/// deprecated), link-local or multicast. IPv4-mapped addresses are judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 88 && c == 99)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let [s0, s1, s2, s3, s4, s5, ..] = v6.segments();
            let ipv4_compatible = s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0;
            !(v6.is_loopback()
                || v6.is_unspecified()
                || ipv4_compatible
                || v6.is_multicast()
                || (s0 == 0x0064 && s1 == 0xff9b && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0)
                || (s0 == 0x0064 && s1 == 0xff9b && s2 == 0x0001)
                || (s0 == 0x0100 && s1 == 0 && s2 == 0 && s3 == 0)
                || (s0 == 0x2001 && s1 == 0)
                || s0 == 0x2002
                || (s0 == 0x2001 && s1 == 0x0db8)
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfec0
                || (s0 & 0xffc0) == 0xfe80)
        }
    }
}
