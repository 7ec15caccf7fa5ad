//! What `lbctl services` shows beyond the table itself: which services a
//! name or an address means, and each checked backend's health (the
//! members' verdict, their reports, this member's own probes).

use std::net::SocketAddr;

use proto::admin::v1 as pb;

use super::AdminService;
use crate::model::State;

/// Which services `lbctl services <what>` means.
#[derive(Debug)]
pub(super) enum ServiceFilter {
    All,
    /// A virtual service's name, or a Kubernetes Service's
    /// `namespace/name` (every port of it).
    Name(String),
    /// An address, with or without a port.
    Address(std::net::IpAddr, Option<u16>),
}

impl ServiceFilter {
    pub(super) fn parse(text: &str) -> ServiceFilter {
        if text.is_empty() {
            return ServiceFilter::All;
        }
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return ServiceFilter::Address(socket.ip(), Some(socket.port()));
        }
        if let Ok(ip) = text.trim_matches(['[', ']']).parse() {
            return ServiceFilter::Address(ip, None);
        }
        ServiceFilter::Name(text.to_owned())
    }

    pub(super) fn matches(&self, s: &crate::model::VirtualService) -> bool {
        match self {
            ServiceFilter::All => true,
            ServiceFilter::Name(name) => {
                s.name == *name
                    || s.name
                        .strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with(':'))
            }
            ServiceFilter::Address(ip, port) => {
                s.key.vip == *ip && port.is_none_or(|p| s.key.port == p)
            }
        }
    }
}

impl AdminService {
    /// The health of the checked backends of `services`: the members'
    /// verdict, the reports and this member's own probes.
    pub(super) fn backend_health(
        &self,
        state: &State,
        services: &[&crate::model::VirtualService],
    ) -> Vec<pb::BackendHealth> {
        let local = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for s in services.iter().filter(|s| s.health.is_some()) {
            let down: Vec<bool> = s
                .backends
                .iter()
                .map(|b| state.backend_down(&s.key, b.address, b.port))
                .collect();
            let failing_open = crate::dataplane::health_fails_open(s, &down);
            for (b, down) in s.backends.iter().zip(down) {
                let slot = (s.key, b.address, b.port);
                let reports = state
                    .health_of(&slot)
                    .into_iter()
                    .flatten()
                    .map(|(member, seen)| proto::state::v1::HealthReport {
                        key: None,
                        address: Vec::new(),
                        port: 0,
                        verdict: if seen.down {
                            proto::state::v1::health_report::Verdict::Down
                        } else {
                            proto::state::v1::health_report::Verdict::Up
                        } as i32,
                        member: *member,
                        since_unix_ms: seen.since_unix_ms,
                    })
                    .collect();
                let mine = local.get(&slot).map(|c| {
                    c.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                });
                let mine = mine.as_ref();
                out.push(pb::BackendHealth {
                    key: Some(crate::model::key_to_pb(&s.key)),
                    address: crate::model::ip_bytes(b.address),
                    port: u32::from(b.port),
                    down,
                    failing_open: failing_open && down,
                    probers: state.deciding_probers(&s.key, b.address, b.port),
                    reports,
                    local_state: mine
                        .map(|m| match m.health {
                            crate::health::machine::Health::Up => "up",
                            crate::health::machine::Health::Down => "down",
                            crate::health::machine::Health::Unknown => "unknown",
                        })
                        .unwrap_or_default()
                        .to_owned(),
                    local_since_unix_ms: mine.map_or(0, |m| m.since_unix_ms),
                    last_ok: mine.is_some_and(|m| m.last.ok),
                    last_detail: mine.map(|m| m.last.detail.to_string()).unwrap_or_default(),
                    last_latency_us: mine.map_or(0, |m| m.last.latency.as_micros() as u64),
                    last_at_unix_ms: mine.map_or(0, |m| m.at_unix_ms),
                });
            }
        }
        out
    }
}
