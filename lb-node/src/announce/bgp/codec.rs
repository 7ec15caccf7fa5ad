//! BGP-4 messages (RFC 4271) as bytes, for an announce-only speaker. Pure.
//!
//! What is built: the header; OPEN with the multiprotocol (RFC 4760),
//! route refresh (RFC 2918) and four-octet AS (RFC 6793) capabilities, and
//! extended optional parameters (RFC 9072) understood; UPDATE with ORIGIN,
//! AS_PATH (four-octet ASNs, or two-octet ones with AS_TRANS and an
//! AS4_PATH to a peer without the capability), NEXT_HOP,
//! MULTI_EXIT_DISC, LOCAL_PREF, COMMUNITIES (RFC 1997), LARGE_COMMUNITIES
//! (RFC 8092) and IPv4 NLRI, or MP_REACH_NLRI / MP_UNREACH_NLRI for IPv6;
//! NOTIFICATION; KEEPALIVE; ROUTE-REFRESH. Decoding checks what RFC 4271
//! §6 asks and answers a malformed message with the error code and subcode
//! to send back. Received UPDATEs are checked only for framing: the
//! speaker ignores received routes.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

pub const HEADER_LEN: usize = 19;
pub const MAX_LEN: usize = 4096;
/// AS_TRANS (RFC 6793): the two-octet stand-in for a four-octet ASN.
pub const AS_TRANS: u16 = 23456;

/// RFC 4271 §4.5 error codes, with their subcodes where used.
pub mod error {
    pub const HEADER: u8 = 1;
    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;
    pub const OPEN: u8 = 2;
    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UPDATE: u8 = 3;
    pub const UPDATE_MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    /// RFC 6608 subcodes of an FSM error: an unexpected message in each
    /// state.
    pub const FSM_IN_OPEN_SENT: u8 = 1;
    pub const FSM_IN_OPEN_CONFIRM: u8 = 2;
    pub const FSM_IN_ESTABLISHED: u8 = 3;
    pub const CEASE: u8 = 6;
    pub const CEASE_ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    /// RFC 9384.
    pub const CEASE_BFD_DOWN: u8 = 10;
}

/// A malformed message: what to put in the NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NOTIFICATION {code}/{subcode})")]
pub struct DecodeError {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
    pub reason: String,
}

fn bad(code: u8, subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        code,
        subcode,
        data,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The speaker's ASN (four-octet; AS_TRANS goes in the two-octet field
    /// when it does not fit).
    pub asn: u32,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    /// (AFI, SAFI) pairs of the multiprotocol capability.
    pub families: Vec<(u16, u8)>,
    /// Whether the four-octet AS capability was present.
    pub four_octet: bool,
    /// Whether the route refresh capability was present.
    pub route_refresh: bool,
    /// The graceful restart capability (RFC 4724), when present.
    pub graceful_restart: Option<GracefulRestart>,
}

/// The graceful restart capability (code 64).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GracefulRestart {
    /// R: the speaker has restarted.
    pub restarting: bool,
    /// Seconds the peer keeps the speaker's routes after the session is
    /// lost (at most 4095).
    pub time: u16,
    /// (AFI, SAFI, F: forwarding state preserved across the restart).
    pub families: Vec<(u16, u8, bool)>,
}

/// Path attributes of an announcement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// The AS path: empty for iBGP, `[our ASN]` for eBGP.
    pub as_path: Vec<u32>,
    /// Whether the peer takes four-octet ASNs in AS_PATH; without,
    /// AS_PATH has two-octet ones (AS_TRANS for the big) and AS4_PATH the
    /// real path.
    pub four_octet: bool,
    pub next_hop: Option<IpAddr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    /// RFC 8092: (global administrator, data 1, data 2).
    pub large_communities: Vec<(u32, u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    /// IPv4 routes withdrawn and announced (with `attributes`): host
    /// routes for VIPs, whole networks for service CIDRs; IPv6 ones travel
    /// in MP_UNREACH / MP_REACH.
    Update {
        withdrawn: Vec<IpNet>,
        announced: Vec<IpNet>,
        attributes: Option<Attributes>,
    },
    Notification {
        code: u8,
        subcode: u8,
        data: Vec<u8>,
    },
    Keepalive,
    /// RFC 2918: send the routes of this family again.
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
    /// RFC 4724's End-of-RIB marker: every route of the family was sent.
    /// (Only sent: a received one decodes as the empty UPDATE it is.)
    EndOfRib {
        afi: u16,
        safi: u8,
    },
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// A prefix as NLRI: its length in bits, then as many octets of the
/// network as that length needs (RFC 4271 4.3).
fn prefix(net: IpNet, out: &mut Vec<u8>) {
    let net = net.trunc();
    let bits = net.prefix_len();
    out.push(bits);
    let octets = usize::from(bits).div_ceil(8);
    match net.network() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()[..octets]),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()[..octets]),
    }
}

fn attribute(flags: u8, kind: u8, value: &[u8], out: &mut Vec<u8>) {
    if value.len() > 255 {
        out.push(flags | 0x10); // extended length
        out.push(kind);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.push(flags);
        out.push(kind);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
}

const WELL_KNOWN: u8 = 0x40; // transitive
const OPTIONAL_TRANSITIVE: u8 = 0xc0;
const OPTIONAL: u8 = 0x80;

impl Message {
    /// The message's bytes, header included. An UPDATE must mix no
    /// families: IPv4 routes or IPv6 routes (the speaker sends one UPDATE
    /// per family and action).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Keepalive => frame(4, &[]),
            Message::EndOfRib { afi, safi } => {
                if (*afi, *safi) == (1, 1) {
                    // IPv4 unicast: an UPDATE with nothing in it.
                    return frame(2, &[0, 0, 0, 0]);
                }
                // Others: an UPDATE with only an empty MP_UNREACH_NLRI.
                let mut v = afi.to_be_bytes().to_vec();
                v.push(*safi);
                let mut attrs = Vec::new();
                attribute(OPTIONAL, 15, &v, &mut attrs);
                let mut b = vec![0, 0];
                b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
                b.extend_from_slice(&attrs);
                frame(2, &b)
            }
            Message::RouteRefresh { afi, safi } => {
                let mut b = afi.to_be_bytes().to_vec();
                b.extend_from_slice(&[0, *safi]);
                frame(5, &b)
            }
            Message::Notification {
                code,
                subcode,
                data,
            } => {
                let mut b = vec![*code, *subcode];
                b.extend_from_slice(data);
                frame(3, &b)
            }
            Message::Open(o) => {
                let mut caps = Vec::new();
                for (afi, safi) in &o.families {
                    caps.extend_from_slice(&[1, 4]);
                    caps.extend_from_slice(&afi.to_be_bytes());
                    caps.extend_from_slice(&[0, *safi]);
                }
                if o.route_refresh {
                    caps.extend_from_slice(&[2, 0]);
                }
                if let Some(gr) = &o.graceful_restart {
                    caps.push(64);
                    caps.push((2 + 4 * gr.families.len()) as u8);
                    let head = (u16::from(gr.restarting) << 15) | (gr.time & 0x0fff);
                    caps.extend_from_slice(&head.to_be_bytes());
                    for (afi, safi, forwarding) in &gr.families {
                        caps.extend_from_slice(&afi.to_be_bytes());
                        caps.push(*safi);
                        caps.push(if *forwarding { 0x80 } else { 0 });
                    }
                }
                if o.four_octet {
                    caps.extend_from_slice(&[65, 4]);
                    caps.extend_from_slice(&o.asn.to_be_bytes());
                }
                let mut params = Vec::new();
                if !caps.is_empty() {
                    params.push(2); // capabilities
                    params.push(caps.len() as u8);
                    params.extend_from_slice(&caps);
                }
                let mut b = vec![4];
                let two = u16::try_from(o.asn).unwrap_or(AS_TRANS);
                b.extend_from_slice(&two.to_be_bytes());
                b.extend_from_slice(&o.hold_time.to_be_bytes());
                b.extend_from_slice(&o.bgp_id.octets());
                b.push(params.len() as u8);
                b.extend_from_slice(&params);
                frame(1, &b)
            }
            Message::Update {
                withdrawn,
                announced,
                attributes,
            } => {
                let mut withdrawn4 = Vec::new();
                let mut nlri4 = Vec::new();
                let mut unreach6 = Vec::new();
                let mut reach6 = Vec::new();
                for net in withdrawn {
                    let to = match net {
                        IpNet::V4(_) => &mut withdrawn4,
                        IpNet::V6(_) => &mut unreach6,
                    };
                    prefix(*net, to);
                }
                for net in announced {
                    let to = match net {
                        IpNet::V4(_) => &mut nlri4,
                        IpNet::V6(_) => &mut reach6,
                    };
                    prefix(*net, to);
                }
                let mut attrs = Vec::new();
                if !unreach6.is_empty() {
                    let mut v = vec![0, 2, 1]; // AFI IPv6, SAFI unicast
                    v.extend_from_slice(&unreach6);
                    attribute(OPTIONAL, 15, &v, &mut attrs);
                }
                if let Some(a) = attributes.as_ref().filter(|_| !announced.is_empty()) {
                    attribute(WELL_KNOWN, 1, &[0], &mut attrs); // ORIGIN IGP
                    // AS_PATH: four-octet ASNs to a peer that takes them;
                    // two-octet ones otherwise, AS_TRANS for those that do
                    // not fit, and the true path in AS4_PATH (RFC 6793).
                    let segment = |four: bool| {
                        let mut path = Vec::new();
                        if !a.as_path.is_empty() {
                            path.push(2); // AS_SEQUENCE
                            path.push(a.as_path.len() as u8);
                            for asn in &a.as_path {
                                if four {
                                    path.extend_from_slice(&asn.to_be_bytes());
                                } else {
                                    let two = u16::try_from(*asn).unwrap_or(AS_TRANS);
                                    path.extend_from_slice(&two.to_be_bytes());
                                }
                            }
                        }
                        path
                    };
                    attribute(WELL_KNOWN, 2, &segment(a.four_octet), &mut attrs);
                    if let (Some(IpAddr::V4(nh)), false) = (a.next_hop, nlri4.is_empty()) {
                        attribute(WELL_KNOWN, 3, &nh.octets(), &mut attrs);
                    }
                    if let Some(med) = a.med {
                        attribute(OPTIONAL, 4, &med.to_be_bytes(), &mut attrs);
                    }
                    if let Some(pref) = a.local_pref {
                        attribute(WELL_KNOWN, 5, &pref.to_be_bytes(), &mut attrs);
                    }
                    if !a.communities.is_empty() {
                        let v: Vec<u8> =
                            a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
                        attribute(OPTIONAL_TRANSITIVE, 8, &v, &mut attrs);
                    }
                    if !reach6.is_empty()
                        && let Some(next_hop) = a.next_hop
                    {
                        let nh = match next_hop {
                            IpAddr::V6(v6) => v6,
                            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        };
                        let mut v = vec![0, 2, 1, 16];
                        v.extend_from_slice(&nh.octets());
                        v.push(0); // reserved
                        v.extend_from_slice(&reach6);
                        attribute(OPTIONAL, 14, &v, &mut attrs);
                    }
                    if !a.four_octet && a.as_path.iter().any(|asn| *asn > u32::from(u16::MAX)) {
                        attribute(OPTIONAL_TRANSITIVE, 17, &segment(true), &mut attrs);
                    }
                    if !a.large_communities.is_empty() {
                        let v: Vec<u8> = a
                            .large_communities
                            .iter()
                            .flat_map(|(g, d1, d2)| {
                                [g.to_be_bytes(), d1.to_be_bytes(), d2.to_be_bytes()].concat()
                            })
                            .collect();
                        attribute(OPTIONAL_TRANSITIVE, 32, &v, &mut attrs);
                    }
                }
                let mut b = Vec::new();
                b.extend_from_slice(&(withdrawn4.len() as u16).to_be_bytes());
                b.extend_from_slice(&withdrawn4);
                b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
                b.extend_from_slice(&attrs);
                b.extend_from_slice(&nlri4);
                frame(2, &b)
            }
        }
    }

    /// Splits one message off the front of `buf`: `Ok(None)` when more
    /// bytes are needed, else the message and its length.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if buf[..16].iter().any(|b| *b != 0xff) {
            return Err(bad(
                error::HEADER,
                error::HEADER_NOT_SYNCHRONIZED,
                Vec::new(),
                "marker is not all ones",
            ));
        }
        let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
        let kind = buf[18];
        let min = match kind {
            1 => 29,
            2 => 23,
            3 => 21,
            4 => 19,
            5 => 23,
            _ => {
                return Err(bad(
                    error::HEADER,
                    error::HEADER_BAD_TYPE,
                    vec![kind],
                    format!("unknown message type {kind}"),
                ));
            }
        };
        if len < min || len > MAX_LEN || (kind == 4 && len != 19) || (kind == 5 && len != 23) {
            return Err(bad(
                error::HEADER,
                error::HEADER_BAD_LENGTH,
                (len as u16).to_be_bytes().to_vec(),
                format!("length {len} is wrong for a type {kind} message"),
            ));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..len];
        let message = match kind {
            1 => decode_open(body)?,
            2 => decode_update(body)?,
            3 => Message::Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            },
            5 => Message::RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            },
            _ => Message::Keepalive,
        };
        Ok(Some((message, len)))
    }
}

fn decode_open(b: &[u8]) -> Result<Message, DecodeError> {
    if b[0] != 4 {
        return Err(bad(
            error::OPEN,
            error::OPEN_UNSUPPORTED_VERSION,
            4u16.to_be_bytes().to_vec(),
            format!("BGP version {}", b[0]),
        ));
    }
    let two = u16::from_be_bytes([b[1], b[2]]);
    let hold_time = u16::from_be_bytes([b[3], b[4]]);
    if hold_time == 1 || hold_time == 2 {
        return Err(bad(
            error::OPEN,
            error::OPEN_UNACCEPTABLE_HOLD_TIME,
            Vec::new(),
            format!("hold time {hold_time}"),
        ));
    }
    let bgp_id = Ipv4Addr::new(b[5], b[6], b[7], b[8]);
    if bgp_id.is_unspecified() {
        return Err(bad(
            error::OPEN,
            error::OPEN_BAD_BGP_ID,
            Vec::new(),
            "BGP identifier 0",
        ));
    }
    let overrun = |what: &str| {
        bad(
            error::HEADER,
            error::HEADER_BAD_LENGTH,
            Vec::new(),
            format!("{what} overrun the message"),
        )
    };
    // RFC 9072: a length of 255 and a first parameter type of 255 mean
    // extended parameters: a two-octet total length, and a two-octet length
    // per parameter.
    let extended = b[9] == 255 && b.get(10) == Some(&255);
    let (params, len_bytes) = if extended {
        let total = usize::from(u16::from_be_bytes([
            *b.get(11).ok_or_else(|| overrun("optional parameters"))?,
            *b.get(12).ok_or_else(|| overrun("optional parameters"))?,
        ]));
        (
            b.get(13..13 + total)
                .ok_or_else(|| overrun("optional parameters"))?,
            2,
        )
    } else {
        let params_len = usize::from(b[9]);
        (
            b.get(10..10 + params_len)
                .ok_or_else(|| overrun("optional parameters"))?,
            1,
        )
    };
    let mut open = Open {
        asn: u32::from(two),
        hold_time,
        bgp_id,
        families: Vec::new(),
        four_octet: false,
        route_refresh: false,
        graceful_restart: None,
    };
    let mut i = 0;
    while i < params.len() {
        let head = params.get(i..i + 1 + len_bytes).ok_or_else(|| {
            bad(
                error::OPEN,
                error::OPEN_UNSUPPORTED_PARAMETER,
                Vec::new(),
                "truncated parameter",
            )
        })?;
        let ptype = head[0];
        let plen = if extended {
            usize::from(u16::from_be_bytes([head[1], head[2]]))
        } else {
            usize::from(head[1])
        };
        let start = i + 1 + len_bytes;
        let value = params.get(start..start + plen).ok_or_else(|| {
            bad(
                error::OPEN,
                error::OPEN_UNSUPPORTED_PARAMETER,
                Vec::new(),
                "parameter overruns",
            )
        })?;
        if ptype != 2 {
            return Err(bad(
                error::OPEN,
                error::OPEN_UNSUPPORTED_PARAMETER,
                Vec::new(),
                format!("optional parameter type {ptype}"),
            ));
        }
        let mut j = 0;
        while j + 2 <= value.len() {
            let code = value[j];
            let clen = usize::from(value[j + 1]);
            let Some(cap) = value.get(j + 2..j + 2 + clen) else {
                break;
            };
            match (code, cap.len()) {
                (1, 4) => open
                    .families
                    .push((u16::from_be_bytes([cap[0], cap[1]]), cap[3])),
                (2, 0) => open.route_refresh = true,
                (64, n) if n >= 2 && (n - 2) % 4 == 0 => {
                    let head = u16::from_be_bytes([cap[0], cap[1]]);
                    open.graceful_restart = Some(GracefulRestart {
                        restarting: head & 0x8000 != 0,
                        time: head & 0x0fff,
                        families: cap[2..]
                            .chunks(4)
                            .map(|f| (u16::from_be_bytes([f[0], f[1]]), f[2], f[3] & 0x80 != 0))
                            .collect(),
                    });
                }
                (65, 4) => {
                    open.four_octet = true;
                    open.asn = u32::from_be_bytes([cap[0], cap[1], cap[2], cap[3]]);
                }
                _ => {} // capabilities we do not use are fine to receive
            }
            j += 2 + clen;
        }
        i = start + plen;
    }
    Ok(Message::Open(open))
}

fn decode_update(b: &[u8]) -> Result<Message, DecodeError> {
    let malformed = |why: &str| {
        bad(
            error::UPDATE,
            error::UPDATE_MALFORMED_ATTRIBUTE_LIST,
            Vec::new(),
            format!("UPDATE: {why}"),
        )
    };
    let wlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let withdrawn = b
        .get(2..2 + wlen)
        .ok_or_else(|| malformed("withdrawn routes overrun"))?;
    let rest = &b[2 + wlen..];
    let alen = usize::from(u16::from_be_bytes([
        *rest
            .first()
            .ok_or_else(|| malformed("no attribute length"))?,
        *rest
            .get(1)
            .ok_or_else(|| malformed("no attribute length"))?,
    ]));
    let attrs = rest
        .get(2..2 + alen)
        .ok_or_else(|| malformed("attributes overrun"))?;
    // Walk the attributes for framing only (received routes are ignored).
    let mut i = 0;
    while i < attrs.len() {
        let flags = attrs[i];
        let header = if flags & 0x10 != 0 { 4 } else { 3 };
        if i + header > attrs.len() {
            return Err(malformed("truncated attribute header"));
        }
        let len = if flags & 0x10 != 0 {
            usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]]))
        } else {
            usize::from(attrs[i + 2])
        };
        if i + header + len > attrs.len() {
            return Err(malformed("attribute overruns the list"));
        }
        i += header + len;
    }
    let parse_prefixes = |mut p: &[u8]| -> Result<usize, DecodeError> {
        let mut n = 0;
        while let Some(&bits) = p.first() {
            if bits > 32 {
                return Err(bad(
                    error::UPDATE,
                    10,
                    Vec::new(),
                    "invalid IPv4 prefix length",
                ));
            }
            let bytes = usize::from(bits).div_ceil(8);
            p = p
                .get(1 + bytes..)
                .ok_or_else(|| bad(error::UPDATE, 10, Vec::new(), "prefix overruns"))?;
            n += 1;
        }
        Ok(n)
    };
    parse_prefixes(withdrawn)?;
    parse_prefixes(&rest[2 + alen..])?;
    Ok(Message::Update {
        withdrawn: Vec::new(),
        announced: Vec::new(),
        attributes: None,
    })
}

/// A standard community (RFC 1997) written "65001:100".
pub fn parse_community(text: &str) -> Option<u32> {
    let (a, b) = text.split_once(':')?;
    Some(
        (u32::from(a.trim().parse::<u16>().ok()?) << 16) | u32::from(b.trim().parse::<u16>().ok()?),
    )
}

/// A large community (RFC 8092): global administrator, two local parts.
pub type LargeCommunity = (u32, u32, u32);

/// A large community (RFC 8092) written "65001:1:2".
pub fn parse_large_community(text: &str) -> Option<LargeCommunity> {
    let mut parts = text.split(':').map(|p| p.trim().parse::<u32>().ok());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) => Some((a, b, c)),
        _ => None,
    }
}

/// A community of either kind, as a service asks for it: "65001:100"
/// (RFC 1997), "65001:1:2" (RFC 8092), or a well-known name
/// (`no-export`, `no-advertise`, `no-export-subconfed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyCommunity {
    Standard(u32),
    Large(LargeCommunity),
}

pub fn parse_any_community(text: &str) -> Option<AnyCommunity> {
    match text.trim() {
        "no-export" => Some(AnyCommunity::Standard(0xFFFF_FF01)),
        "no-advertise" => Some(AnyCommunity::Standard(0xFFFF_FF02)),
        "no-export-subconfed" => Some(AnyCommunity::Standard(0xFFFF_FF03)),
        t if t.matches(':').count() == 2 => parse_large_community(t).map(AnyCommunity::Large),
        t => parse_community(t).map(AnyCommunity::Standard),
    }
}

/// The forms `parse_any_community` takes, for an error message.
pub const ANY_COMMUNITY_FORMS: &str = "a community like \"65001:100\", a large community like \"65001:1:2\", or no-export / no-advertise / no-export-subconfed";

/// Splits `texts` into standard and large communities; the index and
/// text of the first that is neither on error.
pub fn split_communities<'a>(
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<(Vec<u32>, Vec<LargeCommunity>), (usize, String)> {
    let (mut standard, mut large) = (Vec::new(), Vec::new());
    for (i, t) in texts.into_iter().enumerate() {
        match parse_any_community(t) {
            Some(AnyCommunity::Standard(c)) => standard.push(c),
            Some(AnyCommunity::Large(c)) => large.push(c),
            None => return Err((i, t.to_owned())),
        }
    }
    Ok((standard, large))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_of_either_kind_parse() {
        assert_eq!(
            parse_any_community("65001:100"),
            Some(AnyCommunity::Standard(0xFDE9_0064))
        );
        assert_eq!(
            parse_any_community(" 65001:1:2 "),
            Some(AnyCommunity::Large((65001, 1, 2)))
        );
        assert_eq!(
            parse_any_community("no-export"),
            Some(AnyCommunity::Standard(0xFFFF_FF01))
        );
        for bad in [
            "",
            "65001",
            "70000:1",
            "1:2:3:4",
            "a:b",
            "4294967296:1:1",
            "no_export",
        ] {
            assert_eq!(parse_any_community(bad), None, "{bad}");
        }
        assert_eq!(
            split_communities(["1:2", "1:2:3", "x"]),
            Err((2, "x".to_owned()))
        );
        assert_eq!(
            split_communities(["1:2", "1:2:3"]),
            Ok((vec![0x0001_0002], vec![(1, 2, 3)]))
        );
    }

    #[test]
    fn open_round_trips_with_capabilities() {
        let open = Open {
            asn: 4_200_000_001,
            hold_time: 9,
            bgp_id: Ipv4Addr::new(10, 0, 0, 1),
            families: vec![(1, 1), (2, 1)],
            four_octet: true,
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: true,
                time: 120,
                families: vec![(1, 1, true), (2, 1, false)],
            }),
        };
        let bytes = Message::Open(open.clone()).encode();
        assert_eq!(&bytes[19..22], &[4, 0x5b, 0xa0], "version 4, AS_TRANS");
        let (m, n) = Message::decode(&bytes).expect("valid").expect("whole");
        assert_eq!(n, bytes.len());
        assert_eq!(m, Message::Open(open));
    }

    #[test]
    fn end_of_rib_markers() {
        // IPv4: the 23-byte empty UPDATE.
        let v4 = Message::EndOfRib { afi: 1, safi: 1 }.encode();
        assert_eq!(v4.len(), 23);
        assert_eq!(&v4[18..], &[2, 0, 0, 0, 0]);
        // IPv6: an UPDATE with only MP_UNREACH_NLRI(AFI 2, SAFI 1).
        let v6 = Message::EndOfRib { afi: 2, safi: 1 }.encode();
        assert_eq!(&v6[18..], &[2, 0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1]);
        assert!(Message::decode(&v6).expect("valid").is_some());
    }

    #[test]
    fn keepalive_and_notification() {
        assert_eq!(Message::Keepalive.encode().len(), 19);
        let n = Message::Notification {
            code: 6,
            subcode: 2,
            data: vec![],
        };
        let (m, _) = Message::decode(&n.encode()).expect("valid").expect("whole");
        assert_eq!(m, n);
    }

    /// The first bytes BIRD 2.0.12 (Debian's bird2) sent on a session
    /// (AS 65000, hold 9 s, router id 10.99.0.1), captured with a socket
    /// in a lab namespace: its OPEN (capabilities: multiprotocol IPv4
    /// unicast, route refresh, graceful restart, four-octet AS, enhanced
    /// route refresh, long-lived graceful restart) and a KEEPALIVE.
    #[test]
    fn decodes_what_bird_sent() {
        let hex = "ffffffffffffffffffffffffffffffff00350104fde800090a630001180216010400010001\
                   02004002007841040000fde846004700ffffffffffffffffffffffffffffffff001304";
        let captured: Vec<u8> = hex
            .as_bytes()
            .chunks(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).expect("hex"), 16).expect("hex"))
            .collect();
        let (m, n) = Message::decode(&captured).expect("valid").expect("whole");
        let Message::Open(o) = m else {
            panic!("an OPEN")
        };
        assert_eq!(o.asn, 65000);
        assert_eq!(o.hold_time, 9);
        assert_eq!(o.bgp_id, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(o.families, vec![(1, 1)]);
        assert!(o.four_octet);
        let (m, rest) = Message::decode(&captured[n..])
            .expect("valid")
            .expect("whole");
        assert_eq!(m, Message::Keepalive);
        assert_eq!(n + rest, captured.len());
    }

    #[test]
    fn update_announces_v4_and_v6() {
        let m = Message::Update {
            withdrawn: vec!["192.0.2.9/32".parse().expect("net")],
            announced: vec![
                "192.0.2.10/32".parse().expect("net"),
                "10.96.0.0/12".parse().expect("net"),
            ],
            attributes: Some(Attributes {
                as_path: vec![65001],
                next_hop: Some("10.0.0.1".parse().expect("ip")),
                communities: vec![parse_community("65001:100").expect("community")],
                ..Attributes::default()
            }),
        };
        let bytes = m.encode();
        // Withdrawn: 5 bytes (len 32 + 4 octets).
        assert_eq!(&bytes[19..21], &[0, 5]);
        assert_eq!(&bytes[21..26], &[32, 192, 0, 2, 9]);
        // Announced: the host route, then the /12 in two octets.
        assert_eq!(&bytes[bytes.len() - 8..], &[32, 192, 0, 2, 10, 12, 10, 96]);
        assert!(Message::decode(&bytes).expect("valid").is_some());

        let v6 = Message::Update {
            withdrawn: vec![],
            announced: vec!["2001:db8::10/128".parse().expect("net")],
            attributes: Some(Attributes {
                next_hop: Some("2001:db8::1".parse().expect("ip")),
                local_pref: Some(100),
                ..Attributes::default()
            }),
        }
        .encode();
        // No IPv4 NLRI, no NEXT_HOP; an MP_REACH_NLRI (type 14).
        assert!(v6.windows(2).any(|w| w == [0x80, 14]));
        assert!(!v6.windows(3).any(|w| w == [0x40, 3, 4]));
        assert!(Message::decode(&v6).expect("valid").is_some());
    }

    #[test]
    fn malformed_messages_get_their_notification() {
        let mut bad_marker = Message::Keepalive.encode();
        bad_marker[3] = 0;
        assert_eq!(
            Message::decode(&bad_marker).map_err(|e| (e.code, e.subcode)),
            Err((1, 1))
        );
        let mut bad_type = Message::Keepalive.encode();
        bad_type[18] = 9;
        assert_eq!(
            Message::decode(&bad_type).map_err(|e| (e.code, e.subcode)),
            Err((1, 3))
        );
        let mut bad_len = Message::Keepalive.encode();
        bad_len[17] = 20;
        assert_eq!(
            Message::decode(&bad_len).map_err(|e| (e.code, e.subcode)),
            Err((1, 2))
        );
        let mut v3 = Message::Open(Open {
            asn: 1,
            hold_time: 9,
            bgp_id: Ipv4Addr::new(1, 1, 1, 1),
            families: vec![],
            four_octet: false,
            route_refresh: false,
            graceful_restart: None,
        })
        .encode();
        v3[19] = 3;
        assert_eq!(
            Message::decode(&v3).map_err(|e| (e.code, e.subcode)),
            Err((2, 1))
        );
        let mut hold1 = v3.clone();
        hold1[19] = 4;
        hold1[23] = 1;
        assert_eq!(
            Message::decode(&hold1).map_err(|e| (e.code, e.subcode)),
            Err((2, 6))
        );
        // An UPDATE whose attribute overruns its list.
        let update = frame(2, &[0, 0, 0, 3, 0x40, 1, 9]);
        assert_eq!(
            Message::decode(&update).map_err(|e| (e.code, e.subcode)),
            Err((3, 1))
        );
        // Partial input asks for more.
        let ka = Message::Keepalive.encode();
        assert_eq!(Message::decode(&ka[..10]), Ok(None));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u32;
        for len in 0..200 {
            let mut bytes = vec![0xff; 16];
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                bytes.push((seed >> 16) as u8);
            }
            if bytes.len() > 17 {
                bytes[16] = 0;
                bytes[17] = bytes.len().min(255) as u8;
            }
            let _ = Message::decode(&bytes);
        }
    }
}
