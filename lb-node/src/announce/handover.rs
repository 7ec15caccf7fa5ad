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
//! interface. The previous owner is the member whose gratuitous ARP for the
//! VIP was seen last. New connections are this member's from their SYN on;
//! once the window ends the table goes.
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

/// The VIPs being handed over, and to whom their unknown flows go.
#[derive(Debug)]
pub struct Handover {
    interface: String,
    own: Mac,
    /// VIP -> (previous owner's MAC, end of the window).
    active: BTreeMap<Ipv4Addr, (Mac, Instant)>,
    /// Whether the table is in the kernel (as far as we know).
    installed: bool,
    /// How long a flow stays known (longer than any window).
    fresh_timeout_s: u64,
    /// nft failed once: warned, and it is not tried again.
    broken: bool,
    /// `active` changed since the last apply.
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
    pub fn new(interface: &str, own: Mac, window: std::time::Duration) -> Handover {
        Handover {
            interface: interface.to_owned(),
            own,
            active: BTreeMap::new(),
            installed: true, // a table left by an earlier run goes at the first apply
            fresh_timeout_s: window.as_secs() + 60,
            broken: false,
            dirty: true,
            members: std::collections::BTreeSet::new(),
        }
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
        if previous != self.own {
            self.members.insert(previous);
            self.members.insert(self.own);
            self.active.insert(vip, (previous, until));
            self.dirty = true;
        }
    }

    /// This member no longer announces `vip`.
    pub fn end(&mut self, vip: Ipv4Addr) {
        self.dirty |= self.active.remove(&vip).is_some();
    }

    /// Ends every window (shutdown).
    pub fn clear(&mut self) {
        self.dirty |= !self.active.is_empty();
        self.active.clear();
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

    /// The nft script that makes the kernel match `active` (None: nothing
    /// to do).
    fn script(&self) -> Option<String> {
        if self.active.is_empty() {
            return self
                .installed
                .then(|| format!("table netdev {TABLE}\ndelete table netdev {TABLE}\n"));
        }
        let mut s = String::new();
        // Declared (created if missing) with the set kept: flows this
        // member already took stay its own when another VIP is added.
        let _ = writeln!(
            s,
            "table netdev {TABLE} {{\n  set fresh {{\n    type ipv4_addr . inet_service . ipv4_addr . inet_service\n    flags dynamic,timeout\n    timeout {}s\n    size 262144\n  }}\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500; policy accept;\n  }}\n}}",
            self.fresh_timeout_s, self.interface
        );
        let _ = writeln!(s, "flush chain netdev {TABLE} ingress");
        let members: Vec<String> = self.members.iter().map(mac_text).collect();
        let _ = writeln!(
            s,
            "add rule netdev {TABLE} ingress ether saddr {{ {} }} accept",
            members.join(", ")
        );
        let vips: Vec<String> = self.active.keys().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "add rule netdev {TABLE} ingress ip daddr {{ {} }} tcp flags & (syn | ack) == syn update @fresh {{ ip saddr . tcp sport . ip daddr . tcp dport }}",
            vips.join(", ")
        );
        for (vip, (previous, _)) in &self.active {
            let _ = writeln!(
                s,
                "add rule netdev {TABLE} ingress ether daddr {} ip daddr {vip} tcp flags & syn == 0 ip saddr . tcp sport . ip daddr . tcp dport != @fresh ether saddr set {} ether daddr set {} fwd to \"{}\"",
                mac_text(&self.own),
                mac_text(&self.own),
                mac_text(previous),
                self.interface
            );
        }
        Some(s)
    }

    /// Makes the kernel's table match.
    pub async fn apply(&mut self) {
        if self.broken || !self.dirty {
            return;
        }
        self.dirty = false;
        let Some(script) = self.script() else {
            return;
        };
        match crate::nft::apply(&script).await {
            Ok(()) => {
                let before = self.installed;
                self.installed = !self.active.is_empty();
                if self.installed || before {
                    info!(
                        vips = ?self.active.keys().collect::<Vec<_>>(),
                        "flow hand-over: unknown TCP flows of these VIPs go to their previous owner"
                    );
                }
            }
            Err(e) if self.active.is_empty() => {
                // nft missing (the feature is off): nothing was installed.
                self.installed = false;
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
        let mut h = Handover::new("eth0", own, std::time::Duration::from_secs(2));
        h.installed = false;
        assert_eq!(h.script(), None, "nothing installed, nothing active");
        let now = Instant::now();
        h.know([own, [2, 0, 0, 0, 0, 3]]);
        h.begin(
            "10.0.0.1".parse().expect("ip"),
            previous,
            now + std::time::Duration::from_secs(2),
        );
        // Taking a VIP back from ourselves is no hand-over.
        h.begin(
            "10.0.0.2".parse().expect("ip"),
            own,
            now + std::time::Duration::from_secs(2),
        );
        let script = h.script().expect("a script");
        assert!(script.contains("hook ingress device \"eth0\""), "{script}");
        assert!(script.contains("timeout 62s"), "{script}");
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
            script.contains("ip daddr { 10.0.0.1 } tcp flags & (syn | ack) == syn update @fresh"),
            "{script}"
        );
        assert!(
            script.contains("ether daddr 02:00:00:00:00:01 ip daddr 10.0.0.1 tcp flags & syn == 0 ip saddr . tcp sport . ip daddr . tcp dport != @fresh ether saddr set 02:00:00:00:00:01 ether daddr set 02:00:00:00:00:02 fwd to \"eth0\""),
            "{script}"
        );
        assert!(!script.contains("10.0.0.2"), "{script}");
        assert_eq!(
            h.next_expiry(),
            Some(now + std::time::Duration::from_secs(2))
        );
        h.expire(now + std::time::Duration::from_secs(3));
        h.installed = true;
        assert_eq!(
            h.script().as_deref(),
            Some("table netdev lb_node_handover\ndelete table netdev lb_node_handover\n")
        );
    }
}
