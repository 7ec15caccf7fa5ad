//! Announcing the VIPs this member serves to the network.
//!
//! Which VIPs a member announces is decided elsewhere: by the committed
//! VIP owners and the member's lease in a cluster (`Replica::announced_vips`,
//! docs/announcement.md), or every VIP of the table on a standalone member.
//! This module only makes the network know: `l2` answers ARP and neighbour
//! solicitations and sends gratuitous ARP / unsolicited NA on takeover.
//! `bgp` announces them as host routes to BGP peers, and the service CIDRs
//! whole. Addresses inside the service CIDRs are not announced one by
//! one (`announce::ownership::AnnounceScope`): in BGP mode every healthy member
//! announces the CIDRs, in L2 mode nodes route them through the service
//! gateways, which are owned and announced like VIPs.
//!
//! - `frames`: pure: the Ethernet frames, built and parsed.
//! - `l2`: the L2 announcer (rtnetlink and a packet socket); `l2_vips`:
//!   pure: a VIP's life there (answered, lingering, gone).
//! - `bgp`: the BGP speaker (`bgp::codec` is pure).

pub mod bfd;
pub mod bgp;
pub mod frames;
pub mod handover;
pub mod l2;
pub mod l2_vips;
pub mod ownership;

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

impl AnnounceConfig {
    /// Which addresses are announced one by one (`AnnounceScope`).
    pub fn scope(&self) -> crate::announce::ownership::AnnounceScope {
        match self {
            AnnounceConfig::None => crate::announce::ownership::AnnounceScope::default(),
            AnnounceConfig::L2(l2) => crate::announce::ownership::AnnounceScope {
                aggregates: l2.service_cidrs.clone(),
                gateways: l2.service_gateways.iter().copied().collect(),
            },
            AnnounceConfig::Bgp(bgp) => crate::announce::ownership::AnnounceScope {
                aggregates: bgp.service_cidrs.clone(),
                gateways: Default::default(),
            },
        }
    }
}
