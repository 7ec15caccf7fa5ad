//! A table in the text form of `ipvsadm -Sn` (save rules, numeric), so an
//! operator can compare what lb-node plans with what the kernel holds:
//! `diff <(lb-node plan --config FILE) <(ipvsadm -Sn)`.
//!
//! ipvsadm sorts with libipvs's comparators and glibc's `qsort` (a merge
//! sort); this uses the same comparators, C's arithmetic included, and the
//! same merge sort. The comparators are not always an order: addresses are
//! compared by a 32-bit subtraction that wraps (10.0.0.1 sorts after
//! 200.0.0.1), and a destination is compared by the *first* one's family
//! (an IPv4 address against the first 32 bits of an IPv6 one), which is how
//! a tunnel service mixing IPv4 and IPv6 backends lists them. Where they
//! are an order on the table at hand, which is all but tables with
//! addresses more than 2^31 apart in one comparison cycle, the output is
//! ipvsadm's line for line; otherwise the order depends on the kernel's
//! own, and `sort` on both sides makes the diff exact.

use std::fmt::Write as _;

use std::net::IpAddr;

use crate::dataplane::table::{DestKey, Table};
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

/// The 32-bit words of an address as libipvs holds it (`union
/// nf_inet_addr`: an IPv4 address in the first word, the rest zero).
fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from(v4), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// `ntohl(a) - ntohl(b)` for each word in turn as C computes it (unsigned,
/// wrapping, read as int); the first word only for IPv4.
fn cmp_addresses(a: IpAddr, b: IpAddr) -> i32 {
    let (wa, wb) = (words(a), words(b));
    let n = if a.is_ipv6() { 4 } else { 1 };
    (0..n)
        .map(|i| wa[i].wrapping_sub(wb[i]) as i32)
        .find(|r| *r != 0)
        .unwrap_or(0)
}

/// libipvs's `ipvs_cmp_services`: mark, family, protocol, address, port.
fn cmp_services(a: &(&ServiceKey, Option<u32>), b: &(&ServiceKey, Option<u32>)) -> i32 {
    let family = |k: &ServiceKey| if k.vip.is_ipv6() { 10 } else { 2 };
    let protocol = |(k, mark): &(&ServiceKey, Option<u32>)| match (k.protocol, mark) {
        (_, Some(_)) => 0,
        (Protocol::Tcp, None) => 6,
        (Protocol::Udp, None) => 17,
        (Protocol::Sctp, None) => 132,
    };
    // A firewall-mark service has no address or port in the kernel.
    let addr_port = |(k, mark): &(&ServiceKey, Option<u32>)| match mark {
        Some(_) if k.vip.is_ipv6() => (IpAddr::from([0u16; 8]), 0),
        Some(_) => (IpAddr::from([0u8; 4]), 0),
        None => (k.vip, k.port),
    };
    let r = a.1.unwrap_or(0).wrapping_sub(b.1.unwrap_or(0)) as i32;
    if r != 0 {
        return r;
    }
    let r = family(a.0) - family(b.0);
    if r != 0 {
        return r;
    }
    let r = protocol(a) - protocol(b);
    if r != 0 {
        return r;
    }
    let ((va, pa), (vb, pb)) = (addr_port(a), addr_port(b));
    let r = cmp_addresses(va, vb);
    if r != 0 {
        return r;
    }
    i32::from(pa) - i32::from(pb)
}

/// libipvs's `ipvs_cmp_dests`: address (by the first one's family), port.
fn cmp_dests(a: &DestKey, b: &DestKey) -> i32 {
    let r = cmp_addresses(a.address, b.address);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// glibc's `qsort` (`msort_with_tmp`): top-down merge sort, the first half
/// `n / 2`, the left element taken while the comparison is `<= 0`. It
/// never fails on a comparison that is not an order.
fn glibc_msort<T: Copy>(items: &mut [T], cmp: &impl Fn(&T, &T) -> i32) {
    let n = items.len();
    if n <= 1 {
        return;
    }
    let (left, right) = items.split_at_mut(n / 2);
    glibc_msort(left, cmp);
    glibc_msort(right, cmp);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if cmp(&left[i], &right[j]) <= 0 {
            merged.push(left[i]);
            i += 1;
        } else {
            merged.push(right[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&left[i..]);
    merged.extend_from_slice(&right[j..]);
    items.copy_from_slice(&merged);
}

/// The table as `ipvsadm -Sn` prints it, one line per service and
/// destination.
pub fn ipvsadm_rules(table: &Table) -> String {
    let mut keys: Vec<(&ServiceKey, Option<u32>)> = table
        .services
        .iter()
        .map(|(k, s)| (k, s.settings.fwmark))
        .collect();
    glibc_msort(&mut keys, &cmp_services);
    let mut out = String::new();
    for (key, _) in keys {
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
        let mut dests: Vec<&DestKey> = service.destinations.keys().collect();
        glibc_msort(&mut dests, &|a: &&DestKey, b: &&DestKey| cmp_dests(a, b));
        for dest in dests {
            let d = &service.destinations[dest];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> DestKey {
        let a: std::net::SocketAddr = s.parse().expect("address");
        DestKey {
            address: a.ip(),
            port: a.port(),
        }
    }

    #[test]
    fn destinations_of_both_families_sort_as_ipvsadm_does() {
        // fd00::/8 against 10.0.0.0/8: 0xfd00_0000 - 0x0a00_0000 is
        // negative as an int, so the IPv6 ones come first; 2001:db8::
        // against 10.x is positive from the IPv6 side, so they go after.
        let mut d = vec![
            dest("10.0.2.11:80"),
            dest("[fd00:2::11]:80"),
            dest("10.0.2.12:80"),
            dest("[2001:db8::1]:80"),
        ];
        glibc_msort(&mut d, &|a: &DestKey, b: &DestKey| cmp_dests(a, b));
        let text: Vec<String> = d.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            text,
            [
                "[fd00:2::11]:80",
                "10.0.2.11:80",
                "10.0.2.12:80",
                "[2001:db8::1]:80"
            ]
        );
    }

    #[test]
    fn addresses_more_than_2_31_apart_compare_as_c_does() {
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "200.0.0.1".parse().expect("ip");
        assert!(cmp_addresses(a, b) > 0, "wraps: 10.x after 200.x");
        // Not an order here (10 < 100 < 200 < 10): no panic, some order.
        let mut d = vec![dest("200.0.0.1:1"), dest("10.0.0.1:1"), dest("100.0.0.1:1")];
        glibc_msort(&mut d, &|a: &DestKey, b: &DestKey| cmp_dests(a, b));
        assert_eq!(d.len(), 3);
    }
}
