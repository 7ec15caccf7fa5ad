//! LoadBalancer address pools: which address a Service of type
//! LoadBalancer gets. Pure; the leader allocates and commits the result as
//! a `Command::AssignAddresses`, and `State::apply` refuses an address
//! another service holds, so two leaders can never hand out one address.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why no address could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The service asked for an address outside every pool.
    #[error("requested address {0} is in no configured pool")]
    NotInPool(IpAddr),
    /// The service asked for an address another service holds.
    #[error("requested address {0} is already in use")]
    InUse(IpAddr),
    /// Every address of the family is taken.
    #[error("no free {family} address left in the pools")]
    Exhausted { family: &'static str },
}

/// The usable addresses of a pool, in order: an IPv4 network of /30 or
/// wider leaves out its network and broadcast addresses, an IPv6 network
/// of /126 or wider its subnet-router anycast address (all-zero host).
fn usable(pool: &IpNet) -> impl Iterator<Item = IpAddr> + '_ {
    let skip_ends = matches!(pool, IpNet::V4(n) if n.prefix_len() <= 30);
    let skip_anycast = matches!(pool, IpNet::V6(n) if n.prefix_len() <= 126);
    pool.hosts().filter(move |ip| {
        (!skip_ends || (*ip != pool.network() && *ip != pool.broadcast()))
            && (!skip_anycast || *ip != pool.network())
    })
}

/// Whether `ip` is in one of the pools.
pub fn in_pools(pools: &[IpNet], ip: &IpAddr) -> bool {
    pools.iter().any(|p| p.contains(ip))
}

/// An address for a service: `requested` if it is in a pool and not
/// `in_use`, or else the first address of `family` (`true` for IPv6) in
/// pool order that is not.
pub fn allocate(
    pools: &[IpNet],
    in_use: impl Fn(&IpAddr) -> bool,
    requested: Option<IpAddr>,
    ipv6: bool,
) -> Result<IpAddr, AllocError> {
    if let Some(ip) = requested {
        if !in_pools(pools, &ip) {
            return Err(AllocError::NotInPool(ip));
        }
        if in_use(&ip) {
            return Err(AllocError::InUse(ip));
        }
        return Ok(ip);
    }
    pools
        .iter()
        .filter(|p| p.addr().is_ipv6() == ipv6)
        .flat_map(usable)
        .find(|ip| !in_use(ip))
        .ok_or(AllocError::Exhausted {
            family: if ipv6 { "IPv6" } else { "IPv4" },
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn pools() -> Vec<IpNet> {
        ["192.0.2.0/30", "198.51.100.8/31", "2001:db8:5::/126"]
            .iter()
            .map(|p| p.parse().expect("pool"))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn allocates_in_pool_order_skipping_network_and_broadcast() {
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Ok(a) = allocate(&pools(), |ip| used.contains(ip), None, false) {
            used.insert(a);
            got.push(a.to_string());
        }
        assert_eq!(
            got,
            ["192.0.2.1", "192.0.2.2", "198.51.100.8", "198.51.100.9"]
        );
        assert_eq!(
            allocate(&pools(), |ip| used.contains(ip), None, false),
            Err(AllocError::Exhausted { family: "IPv4" })
        );
        // A released address is the next one given.
        used.remove(&ip("192.0.2.2"));
        assert_eq!(
            allocate(&pools(), |ip| used.contains(ip), None, false),
            Ok(ip("192.0.2.2"))
        );
    }

    #[test]
    fn ipv6_pools_serve_ipv6() {
        let a = allocate(&pools(), |_| false, None, true).expect("v6");
        assert!(a.is_ipv6() && pools()[2].contains(&a), "{a}");
    }

    #[test]
    fn a_requested_address_is_honoured_or_refused_with_the_reason() {
        let used: BTreeSet<IpAddr> = [ip("192.0.2.1")].into();
        assert_eq!(
            allocate(
                &pools(),
                |ip| used.contains(ip),
                Some(ip("192.0.2.2")),
                false
            ),
            Ok(ip("192.0.2.2"))
        );
        assert_eq!(
            allocate(
                &pools(),
                |ip| used.contains(ip),
                Some(ip("192.0.2.1")),
                false
            ),
            Err(AllocError::InUse(ip("192.0.2.1")))
        );
        assert_eq!(
            allocate(
                &pools(),
                |ip| used.contains(ip),
                Some(ip("203.0.113.1")),
                false
            ),
            Err(AllocError::NotInPool(ip("203.0.113.1")))
        );
    }
}
