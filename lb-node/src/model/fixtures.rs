//! Numbered services for simulations, benchmarks and tests: service `n`
//! has VIP 10.0.0.0 + n, port 80/tcp, and `backends` backends of weight 1
//! on addresses of its own (172.16.0.0 + 16n + i), so any number of them
//! fit in one table without colliding.

use std::net::{IpAddr, Ipv4Addr};

use super::service::{
    Backend, BackendState, Forwarding, Protocol, Scheduler, ServiceKey, VirtualService,
};

/// Service number `n` with `backends` ready backends (at most 16).
pub fn numbered_service(n: u32, backends: u8) -> VirtualService {
    VirtualService {
        key: ServiceKey {
            vip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(n))),
            port: 80,
            protocol: Protocol::Tcp,
        },
        name: format!("svc-{n}"),
        scheduler: Scheduler::Rr,
        persistence_timeout: None,
        fwmark: None,
        forwarding: Forwarding::Masquerade,
        allowed_sources: vec![],
        bgp_communities: vec![],
        bgp_large_communities: vec![],
        health: None,
        backends: (0..backends.min(16))
            .map(|i| Backend {
                address: IpAddr::V4(Ipv4Addr::from(
                    0xac10_0000u32
                        .wrapping_add(n.wrapping_mul(16))
                        .wrapping_add(u32::from(i)),
                )),
                port: 8080,
                weight: 1,
                state: BackendState::Ready,
            })
            .collect(),
    }
}
