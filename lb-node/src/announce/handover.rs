//! Flow hand-over when this member takes a VIP over from a live member.
//!
//! Moving a VIP flips the clients' ARP caches to the new owner at the
//! instant of its gratuitous ARP. A TCP connection opened through the
//! previous owner (its IPVS connection entry, its masquerade, or its local
//! socket) then sends its next packets here, where nothing knows it: the
//! kernel answers with a reset. That is every long-lived connection
//! through the VIP, and every short one caught mid-handshake: the kernel
//! lab's drills saw one or two failed requests at each graceful move.
//!
//! So, for `window` after a takeover (the previous owner keeps the VIP
//! local for `announce.linger`), this member sends TCP segments of flows it
//! does not know on to the previous owner, at layer 2, before its own
//! stack sees them: an nftables table in the `netdev` family, hooked at
//! ingress of the announcing interface. A flow is this member's when it saw
//! the flow's SYN (the set `fresh`); any other segment for the VIP gets
//! this member's MAC as source (so switches keep learning the client where
//! it is) and the previous owner's as destination, and leaves by the same
//! interface. The previous owner is the member that answers this member's
//! ARP probe for the VIP just before the takeover (`l2::find_holders`): it
//! still announces the VIP or keeps it local, and it is alive. New
//! connections are this member's from their SYN on; once the window ends
//! the VIP's rules go (the table and its hooked chain stay, `Handover`).
//!
//! Limits: TCP over IPv4 only (UDP has no SYN to tell old flows from new;
//! IPv6 VIPs move as before); after a crash the previous owner is dead, and
//! the segments sent to it during the window are lost where they would have
//! been reset (the clients' connections were lost either way; they notice
//! at their next retransmission after the window).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::frames::Mac;

const TABLE: &str = "lb_node_handover";

/// Where the kernel's table stands, as far as this member knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// Not looked at yet: a table left by an earlier run may be there.
    Unknown,
    /// Not there (the feature is off, or after shutdown).
    Absent,
    /// There, with its ingress chain hooked: from now on only its rules
    /// change.
    Hooked,
}

/// The VIPs being handed over, and to whom their unknown flows go.
///
/// The table and its ingress chain are created once, at the first apply,
/// and kept until shutdown; a change only replaces the chain's rules.
/// Creating and deleting a `netdev` ingress chain registers and
/// unregisters a hook on the interface under traffic, and doing that at
/// every VIP move hung the kernel lab's guest (a soft lockup in packet
/// receive) in several runs; rules changed in a hooked chain never did.
#[derive(Debug)]
pub struct Handover {
    interface: String,
    own: Mac,
    /// The feature is on (`announce.flow_handover`): the table is kept.
    enabled: bool,
    /// VIP -> (previous owner's MAC, end of the window).
    active: BTreeMap<Ipv4Addr, (Mac, Instant)>,
    table: Table,
    /// How long a flow stays known (longer than any window).
    fresh_timeout_s: u64,
    /// nft failed once: warned, and it is not tried again.
    broken: bool,
    /// Something changed since the last apply.
    dirty: bool,
    /// The members' MACs (every announcer seen, this member's own): a frame
    /// from one of them is never sent on, so a forwarded frame is never
    /// forwarded again (two members each handing a VIP to the other, for
    /// the moment their windows overlap, would otherwise bounce it for
    /// ever). And only frames sent to this member's MAC are sent on (a
    /// flooded frame for another member's MAC is not ours).
    members: std::collections::BTreeSet<Mac>,
}

fn mac_text(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Handover {
    pub fn new(interface: &str, own: Mac, enabled: bool, window: std::time::Duration) -> Handover {
        Handover {
            interface: interface.to_owned(),
            own,
            enabled,
            active: BTreeMap::new(),
            table: Table::Unknown,
            fresh_timeout_s: window.as_secs() + 60,
            broken: false,
            dirty: true,
            members: std::collections::BTreeSet::from([own]),
        }
    }

    /// Whether the feature is on (`announce.flow_handover` with a linger).
    pub const fn enabled(&self) -> bool {
        self.enabled
    }

    /// The members' MACs known so far (announcers seen).
    pub fn know(&mut self, members: impl IntoIterator<Item = Mac>) {
        for m in members {
            if self.members.insert(m) && !self.active.is_empty() {
                self.dirty = true;
            }
        }
    }

    /// This member took `vip` over from `previous`: hand its unknown flows
    /// there until `until`.
    pub fn begin(&mut self, vip: Ipv4Addr, previous: Mac, until: Instant) {
        if self.enabled && previous != self.own {
            self.members.insert(previous);
            self.active.insert(vip, (previous, until));
            self.dirty = true;
        }
    }

    /// This member no longer announces `vip`.
    pub fn end(&mut self, vip: Ipv4Addr) {
        self.dirty |= self.active.remove(&vip).is_some();
    }

    /// Ends every window and removes the table (shutdown).
    pub fn clear(&mut self) {
        self.active.clear();
        self.enabled = false;
        self.dirty = true;
    }

    /// Ends the windows that are over.
    pub fn expire(&mut self, now: Instant) {
        let before = self.active.len();
        self.active.retain(|_, (_, until)| *until > now);
        self.dirty |= self.active.len() != before;
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.active.values().map(|(_, until)| *until).min()
    }

    /// The nft script that makes the kernel match (None: nothing to do),
    /// and the table's state once it ran.
    fn script(&self) -> Option<(String, Table)> {
        let mut s = String::new();
        if !self.enabled {
            return match self.table {
                Table::Absent => None,
                // Declared first so that deleting it cannot fail.
                Table::Unknown | Table::Hooked => Some((
                    format!("table netdev {TABLE}\ndelete table netdev {TABLE}\n"),
                    Table::Absent,
                )),
            };
        }
        if self.table != Table::Hooked {
            if self.table == Table::Unknown {
                // A table left by an earlier run (maybe for another
                // interface) goes.
                let _ = writeln!(s, "table netdev {TABLE}\ndelete table netdev {TABLE}");
            }
            let _ = writeln!(
                s,
                "table netdev {TABLE} {{\n  set fresh {{\n    type ipv4_addr . inet_service . ipv4_addr . inet_service\n    flags dynamic,timeout\n    timeout {}s\n    size 262144\n  }}\n  set fresh_ports {{\n    type ipv4_addr . inet_service\n    flags dynamic,timeout\n    timeout {}s\n    size 262144\n  }}\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500; policy accept;\n  }}\n}}",
                self.fresh_timeout_s, self.fresh_timeout_s, self.interface
            );
        }
        // The set is kept: flows this member already took stay its own
        // when another VIP is added.
        let _ = writeln!(s, "flush chain netdev {TABLE} ingress");
        if !self.active.is_empty() {
            let members: Vec<String> = self.members.iter().map(mac_text).collect();
            let _ = writeln!(
                s,
                "add rule netdev {TABLE} ingress ether saddr {{ {} }} accept",
                members.join(", ")
            );
            let vips: Vec<String> = self.active.keys().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "add rule netdev {TABLE} ingress ip daddr {{ {} }} tcp flags & (syn | ack) == syn update @fresh {{ ip saddr . tcp sport . ip daddr . tcp dport }} update @fresh_ports {{ ip daddr . tcp sport }}",
                vips.join(", ")
            );
            for (vip, (previous, _)) in &self.active {
                let _ = writeln!(
                    s,
                    "add rule netdev {TABLE} ingress ether daddr {} ip daddr {vip} tcp flags & (syn | ack) != syn ip saddr . tcp sport . ip daddr . tcp dport != @fresh ip daddr . tcp dport != @fresh_ports ether saddr set {} ether daddr set {} fwd to \"{}\"",
                    mac_text(&self.own),
                    mac_text(&self.own),
                    mac_text(previous),
                    self.interface
                );
            }
        }
        Some((s, Table::Hooked))
    }

    /// Makes the kernel's table match.
    pub async fn apply(&mut self) {
        if self.broken || !self.dirty {
            return;
        }
        self.dirty = false;
        let Some((script, after)) = self.script() else {
            return;
        };
        match crate::nft::apply(&script).await {
            Ok(()) => {
                self.table = after;
                if after == Table::Hooked {
                    info!(
                        vips = ?self.active.keys().collect::<Vec<_>>(),
                        "flow hand-over: unknown TCP flows of these VIPs go to their previous owner"
                    );
                }
            }
            Err(e) if !self.enabled => {
                // nft missing (the feature is off): nothing was installed.
                self.table = Table::Absent;
                tracing::debug!(error = %e, "no hand-over table to delete");
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "flow hand-over disabled: nftables refused the table (connections through a moved VIP are reset instead)"
                );
                self.broken = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_forwards_only_unknown_flows_of_vips_in_their_window() {
        let own = [2, 0, 0, 0, 0, 1];
        let previous = [2, 0, 0, 0, 0, 2];
        let window = std::time::Duration::from_secs(2);
        let mut h = Handover::new("eth0", own, true, window);
        // The first script removes a leftover table and hooks the chain,
        // with no rule yet.
        let (first, after) = h.script().expect("a script");
        assert_eq!(after, Table::Hooked);
        assert!(
            first.starts_with(
                "table netdev lb_node_handover\ndelete table netdev lb_node_handover\n"
            ),
            "{first}"
        );
        assert!(first.contains("hook ingress device \"eth0\""), "{first}");
        assert!(first.contains("timeout 62s"), "{first}");
        assert!(!first.contains("add rule"), "{first}");
        h.table = after;

        let now = Instant::now();
        h.know([[2, 0, 0, 0, 0, 3]]);
        h.begin("10.0.0.1".parse().expect("ip"), previous, now + window);
        // Taking a VIP back from ourselves is no hand-over.
        h.begin("10.0.0.2".parse().expect("ip"), own, now + window);
        let (script, _) = h.script().expect("a script");
        // Once hooked, the chain is never declared (hooked) again: only
        // its rules change.
        assert!(!script.contains("hook ingress"), "{script}");
        assert!(!script.contains("delete"), "{script}");
        assert!(
            script.starts_with("flush chain netdev lb_node_handover ingress\n"),
            "{script}"
        );
        // Frames from members (forwarded ones) are never sent on.
        assert!(
            script.contains(
                "ether saddr { 02:00:00:00:00:01, 02:00:00:00:00:02, 02:00:00:00:00:03 } accept"
            ),
            "{script}"
        );
        assert!(
            script.find("accept") < script.find("fwd to"),
            "the members' frames are let through before any forwarding: {script}"
        );
        assert!(
            script.contains("ip daddr { 10.0.0.1 } tcp flags & (syn | ack) == syn update @fresh { ip saddr . tcp sport . ip daddr . tcp dport } update @fresh_ports { ip daddr . tcp sport }"),
            "{script}"
        );
        assert!(
            script.contains("ether daddr 02:00:00:00:00:01 ip daddr 10.0.0.1 tcp flags & (syn | ack) != syn ip saddr . tcp sport . ip daddr . tcp dport != @fresh ip daddr . tcp dport != @fresh_ports ether saddr set 02:00:00:00:00:01 ether daddr set 02:00:00:00:00:02 fwd to \"eth0\""),
            "{script}"
        );
        assert!(!script.contains("10.0.0.2"), "{script}");
        assert_eq!(h.next_expiry(), Some(now + window));

        // The window over: the rules go, the hooked chain stays.
        h.expire(now + std::time::Duration::from_secs(3));
        assert_eq!(
            h.script(),
            Some((
                "flush chain netdev lb_node_handover ingress\n".to_owned(),
                Table::Hooked
            ))
        );
        // Shutdown removes the table.
        h.clear();
        assert_eq!(
            h.script(),
            Some((
                "table netdev lb_node_handover\ndelete table netdev lb_node_handover\n".to_owned(),
                Table::Absent
            ))
        );
    }

    #[test]
    fn with_the_feature_off_only_a_leftover_table_is_removed() {
        let own = [2, 0, 0, 0, 0, 1];
        let mut h = Handover::new("eth0", own, false, std::time::Duration::from_secs(2));
        let (script, after) = h.script().expect("a script");
        assert_eq!(
            script,
            "table netdev lb_node_handover\ndelete table netdev lb_node_handover\n"
        );
        h.table = after;
        h.begin(
            "10.0.0.1".parse().expect("ip"),
            [2, 0, 0, 0, 0, 2],
            Instant::now() + std::time::Duration::from_secs(2),
        );
        assert_eq!(h.script(), None, "off: nothing is ever installed");
    }
}
