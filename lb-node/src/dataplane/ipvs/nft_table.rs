//! lb-node's nftables table, `inet lb_node`: the script that defines it
//! whole, the firewall-mark services it records, and the changes of its
//! masquerade sets' elements. `local` decides when each is used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::Context as _;
use tracing::info;

use crate::model::{Protocol, ServiceKey};

/// The nftables script that (re)defines lb-node's table: masquerade for
/// NAT VIPs, and the marks of firewall-mark services.
pub fn table_script(
    masq: &BTreeSet<IpAddr>,
    marks: &BTreeMap<ServiceKey, u32>,
    to_vip: bool,
) -> String {
    let list = |v6: bool| {
        masq.iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let set = |name: &str, kind: &str, elements: String| {
        if elements.is_empty() {
            format!("  set {name} {{ type {kind}; }}\n")
        } else {
            format!("  set {name} {{ type {kind}; elements = {{ {elements} }} }}\n")
        }
    };
    let mut s =
        String::from("table inet lb_node {}\ndelete table inet lb_node\ntable inet lb_node {\n");
    s += &set("masq4", "ipv4_addr", list(false));
    s += &set("masq6", "ipv6_addr", list(true));
    s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
    if to_vip {
        // The VIP as the source, the client's port kept where it is free:
        // the backend sees the same four addresses whichever member
        // forwards the connection.
        s += "    ct original ip daddr @masq4 snat ip to ct original ip daddr\n";
        s += "    ct original ip6 daddr @masq6 snat ip6 to ct original ip6 daddr\n  }\n";
        // What reaches the local stack for a VIP after IPVS (which takes
        // its services' packets at priority 99) without a connection, but
        // a client's SYN: a backend's answer to a connection this member
        // carries since a takeover but has not seen a client packet of
        // yet, a backend's SYN-ACK to a handshake another member started
        // (the backends' ARP moved first), a segment of a connection
        // nobody synced. Dropped, before conntrack confirms an entry for
        // it, rather than reset: the backend sends it again once the
        // client's next packet has set the translation up.
        s += "  chain input {\n    type filter hook input priority 100; policy accept;\n";
        s += "    ct state new ip daddr @masq4 tcp flags & (syn | ack) != syn drop\n";
        s += "    ct state new ip6 daddr @masq6 tcp flags & (syn | ack) != syn drop\n";
        s += "    ct state new ip daddr @masq4 meta l4proto udp drop\n";
        s += "    ct state new ip6 daddr @masq6 meta l4proto udp drop\n  }\n";
    } else {
        s += "    ct original ip daddr @masq4 masquerade\n";
        s += "    ct original ip6 daddr @masq6 masquerade\n  }\n";
    }
    if !marks.is_empty() {
        s += "  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n";
        for (k, mark) in marks {
            let family = if k.vip.is_ipv6() { "ip6" } else { "ip" };
            let _ = writeln!(
                s,
                "    {family} daddr {} {} dport {} meta mark set {mark:#x}",
                k.vip,
                k.protocol.name(),
                k.port
            );
        }
        s += "  }\n";
    }
    s += "}\n";
    s
}

/// The firewall-mark services recorded in lb-node's table by an earlier
/// run: its prerouting rules name each one and its mark. The kernel names
/// a firewall-mark service by its mark alone, so this record is how a
/// restarted member recognises the ones it programmed (and removes those
/// gone from its table). The record lives exactly as long as the IPVS
/// table it describes (the same network namespace; both gone at reboot).
/// Empty when there is no table (the first run) or nft cannot read it.
pub async fn recorded_marks() -> BTreeMap<ServiceKey, u32> {
    let out = tokio::process::Command::new("nft")
        .args(["-n", "list", "table", "inet", "lb_node"])
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => {
            let marks = parse_marks(&String::from_utf8_lossy(&out.stdout));
            if !marks.is_empty() {
                info!(
                    fwmarks = marks.len(),
                    "firewall-mark services recorded by an earlier run"
                );
            }
            marks
        }
        _ => BTreeMap::new(),
    }
}

/// The marks in `nft -n list table inet lb_node`'s text: lines like
/// `ip daddr 10.0.0.5 tcp dport 80 meta mark set 0x00000064`. Lines of
/// any other form are not lb-node's and are skipped.
pub fn parse_marks(text: &str) -> BTreeMap<ServiceKey, u32> {
    let mut marks = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [
            family,
            "daddr",
            vip,
            protocol,
            "dport",
            port,
            "meta",
            "mark",
            "set",
            mark,
        ] = words[..]
        else {
            continue;
        };
        let Ok(vip) = vip.parse::<IpAddr>() else {
            continue;
        };
        if (family == "ip6") != vip.is_ipv6() || !matches!(family, "ip" | "ip6") {
            continue;
        }
        let Some(protocol) = Protocol::ALL.into_iter().find(|p| p.name() == protocol) else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let Some(Ok(mark)) = mark.strip_prefix("0x").map(|m| u32::from_str_radix(m, 16)) else {
            continue;
        };
        marks.insert(
            ServiceKey {
                vip,
                port,
                protocol,
            },
            mark,
        );
    }
    marks
}

/// Adds `add` to the masquerade sets and deletes `delete` from them: one
/// netlink transaction, whatever the number of VIPs.
pub(super) fn change_elements(
    add: &BTreeSet<IpAddr>,
    delete: &BTreeSet<IpAddr>,
) -> Result<(), crate::nft_sets::SetError> {
    if add.is_empty() && delete.is_empty() {
        return Ok(());
    }
    let change = |set, v6: bool| crate::nft_sets::SetChange {
        set,
        add: add
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .copied()
            .collect(),
        delete: delete
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .copied()
            .collect(),
    };
    crate::nft_sets::apply("lb_node", &[change("masq4", false), change("masq6", true)])
}

pub(super) async fn install_table(
    masq: &BTreeSet<IpAddr>,
    marks: &BTreeMap<ServiceKey, u32>,
    to_vip: bool,
) -> anyhow::Result<()> {
    crate::nft::apply(&table_script(masq, marks, to_vip))
        .await
        .context("the masquerade table")?;
    info!(
        masquerade_vips = masq.len(),
        fwmarks = marks.len(),
        "nftables table inet lb_node installed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marks_nft_lists_are_read_back() {
        let key = |vip: &str, port, protocol| ServiceKey {
            vip: vip.parse().expect("ip"),
            port,
            protocol,
        };
        let marks = BTreeMap::from([
            (key("10.0.0.5", 80, Protocol::Tcp), 100),
            (key("fd00::5", 53, Protocol::Udp), 200),
            (key("10.0.0.6", 443, Protocol::Sctp), u32::MAX),
        ]);
        let masq = BTreeSet::from(["10.0.0.1".parse().expect("ip")]);
        // What `nft -n list table inet lb_node` printed (nftables 1.0.6)
        // for `table_script(masq, marks)`.
        let listed = "table inet lb_node {
\tset masq4 {
\t\ttype ipv4_addr
\t\telements = { 10.0.0.1 }
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tct original ip daddr @masq4 masquerade
\t\tct original ip6 daddr @masq6 masquerade
\t}

\tchain prerouting {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tip daddr 10.0.0.5 tcp dport 80 meta mark set 0x00000064
\t\tip daddr 10.0.0.6 sctp dport 443 meta mark set 0xffffffff
\t\tip6 daddr fd00::5 udp dport 53 meta mark set 0x000000c8
\t\tip daddr 10.0.0.7 tcp dport 80 counter meta mark set 0x1
\t\tip6 daddr 10.0.0.8 tcp dport 80 meta mark set 0x1
\t}
}
";
        assert_eq!(parse_marks(listed), marks);
        // The script writes each of them as one such line.
        let script = table_script(&masq, &marks, false);
        assert!(table_script(&masq, &marks, true).contains("snat ip to ct original ip daddr"));
        for line in [
            "ip daddr 10.0.0.5 tcp dport 80 meta mark set 0x64",
            "ip6 daddr fd00::5 udp dport 53 meta mark set 0xc8",
        ] {
            assert!(script.contains(line), "{script}");
        }
    }
}
