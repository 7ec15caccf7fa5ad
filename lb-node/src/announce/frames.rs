//! Ethernet frames of L2 announcement, built and parsed as bytes. Pure.
//!
//! - Gratuitous ARP (RFC 5227 §3, the forms keepalived and MetalLB send):
//!   a request and a reply, both broadcast, sender and target protocol
//!   address the VIP, sender hardware address ours.
//! - Unsolicited neighbour advertisement (RFC 4861 §7.2.6): to all-nodes
//!   `ff02::1`, hop limit 255, Override set, Solicited clear, with the
//!   target link-layer address option.
//! - Answers: an ARP reply to an ARP request for a VIP, and a solicited
//!   neighbour advertisement to a neighbour solicitation for one.

use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP packet (Ethernet/IPv4) inside its frame.
fn arp(
    dst: Mac,
    op: u16,
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target_mac: Mac,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p.push(6);
    p.push(4);
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sender_mac);
    p.extend_from_slice(&sender_ip.octets());
    p.extend_from_slice(&target_mac);
    p.extend_from_slice(&target_ip.octets());
    ethernet(dst, sender_mac, ETHERTYPE_ARP, &p)
}

/// The two gratuitous ARP forms: a request and a reply, both broadcast.
pub fn gratuitous_arp(mac: Mac, vip: Ipv4Addr) -> [Vec<u8>; 2] {
    [
        arp(BROADCAST, 1, mac, vip, [0; 6], vip),
        arp(BROADCAST, 2, mac, vip, BROADCAST, vip),
    ]
}

/// A broadcast ARP request: who has `target`? Tell `sender_ip`.
pub fn arp_request(mac: Mac, sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp(BROADCAST, 1, mac, sender_ip, [0; 6], target)
}

/// The multicast MAC of an IPv6 multicast address (RFC 2464 §7).
fn multicast_mac(ip: Ipv6Addr) -> Mac {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 checksum over the pseudo-header (RFC 8200 §8.1).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A neighbour advertisement for `target` from `src` to `dst`.
fn advertisement(
    mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.push(NEIGHBOUR_ADVERTISEMENT);
    icmp.push(0);
    icmp.extend_from_slice(&[0, 0]); // checksum, below
    // Flags: Router 0x80, Solicited 0x40, Override 0x20.
    icmp.push(if solicited { 0x60 } else { 0x20 });
    icmp.extend_from_slice(&[0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    // Target link-layer address option: type 2, length 1 (8 bytes).
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut ip = Vec::with_capacity(40 + icmp.len());
    ip.extend_from_slice(&[0x60, 0, 0, 0]); // version 6
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.push(ICMPV6);
    ip.push(255); // hop limit: RFC 4861 requires 255
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&icmp);
    ethernet(dst_mac, mac, ETHERTYPE_IPV6, &ip)
}

/// An unsolicited neighbour advertisement with Override, to all nodes.
pub fn unsolicited_na(mac: Mac, vip: Ipv6Addr) -> Vec<u8> {
    advertisement(mac, multicast_mac(ALL_NODES), vip, ALL_NODES, vip, false)
}

/// What a received frame asks of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// An ARP request: who has `target`? Tell `sender_ip` at `sender_mac`.
    Arp {
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target: Ipv4Addr,
    },
    /// A neighbour solicitation for `target` from `src` (unspecified for
    /// duplicate address detection) at `src_mac`.
    Solicitation {
        src_mac: Mac,
        src: Ipv6Addr,
        target: Ipv6Addr,
    },
}

/// Parses an ARP request or a neighbour solicitation; anything else (or
/// anything malformed) is `None`. Never panics on any input.
pub fn parse_request(frame: &[u8]) -> Option<Request> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let src_mac: Mac = frame.get(6..12)?.try_into().ok()?;
    let payload = frame.get(14..)?;
    match ethertype {
        ETHERTYPE_ARP => {
            let p = payload.get(..28)?;
            if p[0..2] != [0, 1] || p[2..4] != [8, 0] || p[4] != 6 || p[5] != 4 || p[6..8] != [0, 1]
            {
                return None;
            }
            Some(Request::Arp {
                sender_mac: p[8..14].try_into().ok()?,
                sender_ip: Ipv4Addr::from(<[u8; 4]>::try_from(&p[14..18]).ok()?),
                target: Ipv4Addr::from(<[u8; 4]>::try_from(&p[24..28]).ok()?),
            })
        }
        ETHERTYPE_IPV6 => {
            let ip = payload.get(..40)?;
            if ip[0] >> 4 != 6 || ip[6] != ICMPV6 || ip[7] != 255 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let icmp = payload.get(40..)?;
            if *icmp.first()? != NEIGHBOUR_SOLICITATION || icmp.len() < 24 {
                return None;
            }
            let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
            Some(Request::Solicitation {
                src_mac,
                src,
                target,
            })
        }
        _ => None,
    }
}

/// An ARP reply: who sent it, for which address (the answer to a probe).
pub fn parse_arp_reply(frame: &[u8]) -> Option<(Mac, Ipv4Addr)> {
    if u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) != ETHERTYPE_ARP {
        return None;
    }
    let p = frame.get(14..42)?;
    if p[0..2] != [0, 1] || p[2..4] != [8, 0] || p[4] != 6 || p[5] != 4 || p[6..8] != [0, 2] {
        return None;
    }
    Some((
        p[8..14].try_into().ok()?,
        Ipv4Addr::from(<[u8; 4]>::try_from(&p[14..18]).ok()?),
    ))
}

/// Our answer to a request for `mac`'s VIP, as the kernel would give it.
pub fn answer(mac: Mac, request: &Request) -> Vec<u8> {
    match *request {
        Request::Arp {
            sender_mac,
            sender_ip,
            target,
        } => arp(sender_mac, 2, mac, target, sender_mac, sender_ip),
        Request::Solicitation {
            src_mac,
            src,
            target,
        } => {
            if src.is_unspecified() {
                // Duplicate address detection: answer to all nodes,
                // unsolicited (RFC 4861 §7.2.4).
                advertisement(
                    mac,
                    multicast_mac(ALL_NODES),
                    target,
                    ALL_NODES,
                    target,
                    false,
                )
            } else {
                advertisement(mac, src_mac, target, src, target, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn gratuitous_arp_has_both_forms() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let [request, reply] = gratuitous_arp(MAC, vip);
        for (frame, op) in [(&request, 1u8), (&reply, 2u8)] {
            assert_eq!(frame.len(), 42);
            assert_eq!(&frame[0..6], &BROADCAST);
            assert_eq!(&frame[6..12], &MAC);
            assert_eq!(&frame[12..14], &[0x08, 0x06]);
            assert_eq!(frame[21], op);
            assert_eq!(&frame[22..28], &MAC, "sender hardware address");
            assert_eq!(&frame[28..32], &vip.octets(), "sender protocol address");
            assert_eq!(&frame[38..42], &vip.octets(), "target protocol address");
        }
        // Our own request parses back as a request for the VIP.
        assert_eq!(
            parse_request(&request),
            Some(Request::Arp {
                sender_mac: MAC,
                sender_ip: vip,
                target: vip
            })
        );
        assert_eq!(parse_request(&reply), None, "a reply asks nothing");
    }

    #[test]
    fn unsolicited_na_is_well_formed() {
        let vip: Ipv6Addr = "2001:db8::10".parse().expect("ip");
        let f = unsolicited_na(MAC, vip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ip = &f[14..];
        assert_eq!(ip[6], 58);
        assert_eq!(ip[7], 255);
        let icmp = &ip[40..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "Override, not Solicited");
        assert_eq!(&icmp[8..24], &vip.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
        // A correct checksum sums (with the pseudo-header) to 0xffff, i.e.
        // recomputing over the filled-in packet gives 0.
        assert_eq!(icmpv6_checksum(vip, ALL_NODES, icmp), 0);
    }

    #[test]
    fn answers_arp_and_solicitations() {
        let client_mac: Mac = [0x02, 0, 0, 0, 0, 0x99];
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let asked = arp(
            BROADCAST,
            1,
            client_mac,
            Ipv4Addr::new(192, 0, 2, 1),
            [0; 6],
            vip,
        );
        let request = parse_request(&asked).expect("a request");
        let reply = answer(MAC, &request);
        assert_eq!(&reply[0..6], &client_mac);
        assert_eq!(reply[21], 2);
        assert_eq!(&reply[28..32], &vip.octets());
        assert_eq!(&reply[32..38], &client_mac);

        let vip6: Ipv6Addr = "2001:db8::10".parse().expect("ip");
        let client6: Ipv6Addr = "2001:db8::1".parse().expect("ip");
        // A solicitation, built like an advertisement with type 135.
        let mut ns = advertisement(
            client_mac,
            [0x33, 0x33, 0xff, 0, 0, 0x10],
            client6,
            vip6,
            vip6,
            false,
        );
        ns[14 + 40] = NEIGHBOUR_SOLICITATION;
        let request = parse_request(&ns).expect("a solicitation");
        assert_eq!(
            request,
            Request::Solicitation {
                src_mac: client_mac,
                src: client6,
                target: vip6
            }
        );
        let na = answer(MAC, &request);
        assert_eq!(&na[0..6], &client_mac);
        assert_eq!(na[14 + 40 + 4], 0x60, "Solicited and Override");
        assert_eq!(icmpv6_checksum(vip6, client6, &na[14 + 40..]), 0);
    }

    #[test]
    fn a_probe_is_answered_to_the_prober_and_the_answer_read_back() {
        let member: Mac = [0x02, 0, 0, 0, 0, 0x02];
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        // RFC 5227 probe: sender address 0.0.0.0, nobody's cache changes.
        let probe = arp_request(member, Ipv4Addr::UNSPECIFIED, vip);
        assert_eq!(parse_arp_reply(&probe), None, "a request is not a reply");
        let request = parse_request(&probe).expect("a request");
        assert_eq!(
            request,
            Request::Arp {
                sender_mac: member,
                sender_ip: Ipv4Addr::UNSPECIFIED,
                target: vip
            }
        );
        let reply = answer(MAC, &request);
        assert_eq!(&reply[0..6], &member, "unicast to the prober");
        assert_eq!(parse_arp_reply(&reply), Some((MAC, vip)));
        assert_eq!(parse_request(&reply), None, "a reply is not a request");
        // The gratuitous reply form is a reply too (from its announcer).
        let [_, garp_reply] = gratuitous_arp(MAC, vip);
        assert_eq!(parse_arp_reply(&garp_reply), Some((MAC, vip)));
        for len in 0..42 {
            assert_eq!(parse_arp_reply(&reply[..len]), None);
        }
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..80 {
            let frame: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_request(&frame);
            let mut arpish = frame.clone();
            if arpish.len() > 13 {
                arpish[12] = 8;
                arpish[13] = 6;
                let _ = parse_request(&arpish);
                arpish[12] = 0x86;
                arpish[13] = 0xdd;
                let _ = parse_request(&arpish);
            }
        }
    }
}
