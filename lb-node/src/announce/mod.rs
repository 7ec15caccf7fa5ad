//! Announcing the VIPs this member serves to the network.
//!
//! Which VIPs a member announces is decided elsewhere: by the committed
//! VIP owners and the member's lease in a cluster (`Replica::announced_vips`,
//! docs/announcement.md), or every VIP of the table on a standalone member.
//! This module only makes the network know: `l2` answers ARP and neighbour
//! solicitations and sends gratuitous ARP / unsolicited NA on takeover.
//! `bgp` announces them as host routes to BGP peers.
//!
//! - `frames`: pure: the Ethernet frames, built and parsed.
//! - `l2`: the L2 announcer (rtnetlink and a packet socket).
//! - `bgp`: the BGP speaker (`bgp::codec` is pure).

pub mod bgp;
pub mod frames;
pub mod handover;
pub mod l2;

/// `[announce]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AnnounceConfig {
    /// Nothing is announced (the VIPs are routed to the members by other
    /// means, or this is a test).
    #[default]
    None,
    L2(l2::L2Config),
    Bgp(bgp::BgpConfig),
}
