//! A table in the text form of `ipvsadm -Sn` (save rules, numeric), so an
//! operator can compare what lb-node plans with what the kernel holds:
//! `diff <(lb-node plan --config FILE) <(ipvsadm -Sn)`.
//!
//! ipvsadm sorts services by address family, protocol, address and port,
//! and destinations by address and port; so does this. (ipvsadm compares
//! IPv4 addresses by a subtraction that overflows for addresses more than
//! 2^31 apart; pipe both sides through `sort` if such a table differs only
//! in order.)

use std::fmt::Write as _;

use crate::dataplane::table::Table;
use crate::model::{Forwarding, Protocol, ServiceKey, SocketText};

fn protocol_switch(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    }
}

fn forwarding_switch(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Masquerade => "-m",
        Forwarding::Direct => "-g",
        Forwarding::Tunnel => "-i",
    }
}

/// ipvsadm's service order: firewall mark (none first), family, protocol
/// number, address, port.
fn ipvsadm_order(k: &ServiceKey, fwmark: Option<u32>) -> (u32, bool, u8, std::net::IpAddr, u16) {
    let proto = match k.protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    };
    match fwmark {
        Some(mark) => (mark, k.vip.is_ipv6(), 0, k.vip, 0),
        None => (0, k.vip.is_ipv6(), proto, k.vip, k.port),
    }
}

/// The table as `ipvsadm -Sn` prints it, one line per service and
/// destination.
pub fn ipvsadm_rules(table: &Table) -> String {
    let mut keys: Vec<&ServiceKey> = table.services.keys().collect();
    keys.sort_by_key(|k| ipvsadm_order(k, table.services[*k].settings.fwmark));
    let mut out = String::new();
    for key in keys {
        let service = &table.services[key];
        let name = match service.settings.fwmark {
            Some(mark) if key.vip.is_ipv6() => format!("-f {mark} -6"),
            Some(mark) => format!("-f {mark}"),
            None => format!(
                "{} {}",
                protocol_switch(key.protocol),
                SocketText(key.vip, key.port)
            ),
        };
        let _ = write!(out, "-A {name} -s {}", service.settings.scheduler);
        if let Some(timeout) = service.settings.persistence_timeout {
            let _ = write!(out, " -p {timeout}");
        }
        out.push('\n');
        for (dest, d) in &service.destinations {
            let _ = write!(
                out,
                "-a {name} -r {dest} {} -w {}",
                forwarding_switch(d.forwarding),
                d.weight
            );
            if d.forwarding == Forwarding::Tunnel {
                out.push_str(" --tun-type ipip");
            }
            out.push('\n');
        }
    }
    out
}
