//! Conntrack entries for the synced connections of a VIP this member
//! takes over (issue 21, docs/connections.md).
//!
//! With connection sync the masquerade rewrites a connection's source to
//! the VIP (keeping the client's port), so a backend answers VIP:port.
//! The member that takes the VIP over has the connection's IPVS entry from
//! the sync, but no conntrack entry: the kernel makes one, and with it the
//! way back, from the client's next segment. A connection whose client has
//! nothing to send (its request was acknowledged, the answer was lost
//! with the crashed member) gets no such segment: the backend's
//! retransmissions reach the new owner with no translation, are dropped,
//! and the connection hangs until the client gives up. The kernel lab
//! caught it: 1 to 56 of 200 connections lost in 10 of 52 runs on a busy
//! host, where answers are slow (packet captures in docs/connections.md).
//!
//! So before announcing a VIP it takes over, the member makes, for each
//! established TCP connection of that VIP that its IPVS holds and that a
//! masquerading destination carries, the conntrack entry the previous
//! owner had: original client:port → VIP:port, reply backend:port →
//! client:port (IPVS's translation), source NAT to VIP:client-port, over
//! ctnetlink (`IPCTNL_MSG_CT_NEW`, as conntrackd does when a firewall
//! fails over). An entry already there is left as it is (`EEXIST`).
//! Liberal window tracking for these entries: their windows are unknown.
//!
//! IPv4 only, as the flow hand-over (IPv6 VIPs move as before).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};

use tracing::{info, warn};

use crate::nft_sets::{attr, nest};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const AF_INET: u8 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;
const IPPROTO_TCP: u8 = 6;
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
/// `IP_CT_TCP_FLAG_BE_LIBERAL`, as flags and mask.
const BE_LIBERAL: [u8; 2] = [0x08, 0x08];
/// `IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED`: the kernel marks a
/// created entry confirmed before it applies the status, and refuses one
/// that would clear that bit.
const STATUS: u32 = 0x2 | 0x4 | 0x8;
/// The entry's first timeout; traffic moves it on as for any other.
const TIMEOUT_S: u32 = 300;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One synced connection of a masquerading destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub backend: SocketAddrV4,
}

/// What seeding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    pub created: usize,
    /// Already there (the client's traffic made it, or an earlier seed).
    pub existed: usize,
    /// Refused for another reason (the first reason is in `error`).
    pub failed: usize,
}

fn hex_v4(text: &str) -> Option<Ipv4Addr> {
    (text.len() == 8)
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
        .map(Ipv4Addr::from)
}

fn hex_socket(addr: &str, port: &str) -> Option<SocketAddrV4> {
    Some(SocketAddrV4::new(
        hex_v4(addr)?,
        u16::from_str_radix(port, 16).ok()?,
    ))
}

/// Makes the conntrack entries of the synced connections of `vips`,
/// which this member is about to announce (L2, or BGP's owner mode):
/// without them, a connection whose client waits for an answer lost with
/// the previous owner hangs. Logged; a failure costs only those
/// connections, never the announcement.
pub async fn seed_logged(vips: Vec<Ipv4Addr>) {
    let started = tokio::time::Instant::now();
    let vips_text = format!("{vips:?}");
    match tokio::task::spawn_blocking(move || seed_vips(&vips)).await {
        Ok(Ok((flows, seeded, error))) => {
            info!(
                vips = vips_text,
                connections = flows,
                created = seeded.created,
                existed = seeded.existed,
                failed = seeded.failed,
                error = error.unwrap_or_default(),
                took = ?started.elapsed(),
                "conntrack entries made for the synced connections of VIPs taken over"
            );
        }
        Ok(Err(e)) => warn!(
            vips = vips_text,
            error = e,
            "cannot make conntrack entries for the synced connections of VIPs taken over: connections waiting for an answer may hang"
        ),
        Err(e) => warn!(vips = vips_text, error = %e, "conntrack seeding did not finish"),
    }
}

/// The (virtual service, destination) pairs that masquerade, from
/// `/proc/net/ip_vs` (IPv4 TCP services).
pub fn masquerading(ip_vs: &str) -> BTreeSet<(SocketAddrV4, SocketAddrV4)> {
    let mut out = BTreeSet::new();
    let mut service: Option<SocketAddrV4> = None;
    for line in ip_vs.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["TCP", local, ..] => {
                service = local.split_once(':').and_then(|(a, p)| hex_socket(a, p));
            }
            ["->", remote, "Masq", ..] => {
                if let (Some(s), Some(d)) = (
                    service,
                    remote.split_once(':').and_then(|(a, p)| hex_socket(a, p)),
                ) {
                    out.insert((s, d));
                }
            }
            ["->", ..] => {}
            _ => service = None,
        }
    }
    out
}

/// The established TCP connections to `vips` in `/proc/net/ip_vs_conn`
/// whose (service, destination) masquerades.
pub fn flows(
    ip_vs_conn: &str,
    vips: &[Ipv4Addr],
    masq: &BTreeSet<(SocketAddrV4, SocketAddrV4)>,
) -> Vec<Flow> {
    ip_vs_conn
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[0] != "TCP" || f[7] != "ESTABLISHED" {
                return None;
            }
            let flow = Flow {
                client: hex_socket(f[1], f[2])?,
                vip: hex_socket(f[3], f[4])?,
                backend: hex_socket(f[5], f[6])?,
            };
            (vips.contains(flow.vip.ip()) && masq.contains(&(flow.vip, flow.backend)))
                .then_some(flow)
        })
        .collect()
}

fn tuple(out: &mut Vec<u8>, kind: u16, src: SocketAddrV4, dst: SocketAddrV4) {
    nest(out, kind, |t| {
        nest(t, CTA_TUPLE_IP, |ip| {
            attr(ip, CTA_IP_V4_SRC, &src.ip().octets());
            attr(ip, CTA_IP_V4_DST, &dst.ip().octets());
        });
        nest(t, CTA_TUPLE_PROTO, |p| {
            attr(p, CTA_PROTO_NUM, &[IPPROTO_TCP]);
            attr(p, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
            attr(p, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
        });
    });
}

/// The `IPCTNL_MSG_CT_NEW` message for `flow`, as the previous owner's
/// entry was: original client → VIP, reply backend → client (IPVS), source
/// NAT to the VIP with the client's port.
pub fn message(flow: &Flow, seq: u32) -> Vec<u8> {
    let mut body = Vec::new();
    tuple(&mut body, CTA_TUPLE_ORIG, flow.client, flow.vip);
    tuple(&mut body, CTA_TUPLE_REPLY, flow.backend, flow.client);
    nest(&mut body, CTA_NAT_SRC, |n| {
        attr(n, CTA_NAT_V4_MINIP, &flow.vip.ip().octets());
        attr(n, CTA_NAT_V4_MAXIP, &flow.vip.ip().octets());
        nest(n, CTA_NAT_PROTO, |p| {
            attr(p, CTA_PROTONAT_PORT_MIN, &flow.client.port().to_be_bytes());
            attr(p, CTA_PROTONAT_PORT_MAX, &flow.client.port().to_be_bytes());
        });
    });
    attr(&mut body, CTA_TIMEOUT, &TIMEOUT_S.to_be_bytes());
    attr(&mut body, CTA_STATUS, &STATUS.to_be_bytes());
    nest(&mut body, CTA_PROTOINFO, |pi| {
        nest(pi, CTA_PROTOINFO_TCP, |tcp| {
            attr(tcp, CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_ESTABLISHED]);
            attr(tcp, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &BE_LIBERAL);
            attr(tcp, CTA_PROTOINFO_TCP_FLAGS_REPLY, &BE_LIBERAL);
        });
    });
    let mut out = Vec::with_capacity(20 + body.len());
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(AF_INET);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Makes the conntrack entries of `flows`; the first refusal other than
/// `EEXIST` is returned with the counts.
pub fn seed(flows: &[Flow]) -> Result<(Seeded, Option<String>), String> {
    let mut seeded = Seeded::default();
    if flows.is_empty() {
        return Ok((seeded, None));
    }
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| format!("netlink socket: {e}"))?;
    socket
        .bind_auto()
        .map_err(|e| format!("netlink bind: {e}"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| format!("netlink connect: {e}"))?;
    socket2::SockRef::from(&socket)
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    let mut first_error = None;
    let mut rx = vec![0u8; 64 * 1024];
    // Each answer is an skb of about 1 KiB of receive buffer: 64 a send
    // stay well within the default (208 KiB).
    for chunk in flows.chunks(64) {
        let mut buf = Vec::new();
        for (i, flow) in chunk.iter().enumerate() {
            buf.extend_from_slice(&message(flow, 1 + i as u32));
        }
        let sent = socket
            .send(&buf, 0)
            .map_err(|e| format!("netlink send: {e}"))?;
        if sent != buf.len() {
            return Err(format!("netlink: short send ({sent} of {})", buf.len()));
        }
        let mut answered = 0;
        while answered < chunk.len() {
            let n = {
                let mut into = &mut rx[..];
                socket.recv(&mut into, 0).map_err(|e| {
                    format!(
                        "ctnetlink: {} of {} answers missing: {e}",
                        chunk.len() - answered,
                        chunk.len()
                    )
                })?
            };
            let rx = &rx[..n];
            let mut at = 0;
            while at + 16 <= rx.len() {
                let len = u32::from_ne_bytes([rx[at], rx[at + 1], rx[at + 2], rx[at + 3]]) as usize;
                let kind = u16::from_ne_bytes([rx[at + 4], rx[at + 5]]);
                if len < 16 || at + len > rx.len() {
                    break;
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code =
                        i32::from_ne_bytes([rx[at + 16], rx[at + 17], rx[at + 18], rx[at + 19]]);
                    answered += 1;
                    match -code {
                        0 => seeded.created += 1,
                        17 => seeded.existed += 1, // EEXIST
                        errno => {
                            seeded.failed += 1;
                            first_error.get_or_insert_with(|| {
                                std::io::Error::from_raw_os_error(errno).to_string()
                            });
                        }
                    }
                }
                at += len.next_multiple_of(4);
            }
        }
    }
    Ok((seeded, first_error))
}

/// Seeds the conntrack entries of the synced, masquerading, established
/// connections of `vips` (read from this namespace's IPVS).
pub fn seed_vips(vips: &[Ipv4Addr]) -> Result<(usize, Seeded, Option<String>), String> {
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let masq = masquerading(&read("/proc/net/ip_vs")?);
    let flows = flows(&read("/proc/net/ip_vs_conn")?, vips, &masq);
    let (seeded, error) = seed(&flows)?;
    // nfnetlink answers EINVAL to a subsystem it does not have: the kernel
    // could not load ctnetlink.
    let error = error.map(|e| {
        if seeded.failed == flows.len() && e == std::io::Error::from_raw_os_error(22).to_string() {
            format!("{e}: is nf_conntrack_netlink loaded? (modprobe nf_conntrack_netlink)")
        } else {
            e
        }
    });
    Ok((flows.len(), seeded, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NLA_F_NESTED: u16 = 0x8000;

    const IP_VS: &str = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A4D0032:2328 mh 
  -> 0A4D00C8:2328      Masq    1      10         0         
  -> 0A4D00C9:2328      Route   1      10         0         
UDP  0A4D0032:0035 mh 
  -> 0A4D00C8:0035      Masq    1      0          1         
TCP  0A4D0033:2328 mh 
  -> 0A4D00C9:2328      Masq    1      0          0         
";

    fn sock(text: &str) -> SocketAddrV4 {
        text.parse()
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }

    #[test]
    fn only_masquerading_tcp_destinations_are_taken() {
        let m = masquerading(IP_VS);
        let want: BTreeSet<_> = [
            (sock("10.77.0.50:9000"), sock("10.77.0.200:9000")),
            (sock("10.77.0.51:9000"), sock("10.77.0.201:9000")),
        ]
        .into_iter()
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn established_connections_of_the_vips_taken_over_are_seeded() {
        let conns =
            "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A4D0064 E032 0A4D0032 2328 0A4D00C8 2328 ESTABLISHED   895
TCP 0A4D0064 E033 0A4D0032 2328 0A4D00C8 2328 FIN_WAIT       95
TCP 0A4D0064 E034 0A4D0032 2328 0A4D00C9 2328 ESTABLISHED   895
TCP 0A4D0064 E035 0A4D0033 2328 0A4D00C9 2328 ESTABLISHED   895
UDP 0A4D0064 E036 0A4D0032 0035 0A4D00C8 0035 UDP           295
";
        let m = masquerading(IP_VS);
        let f = flows(conns, &[Ipv4Addr::new(10, 77, 0, 50)], &m);
        // Not the one in FIN_WAIT, not the one routed directly, not the
        // other VIP's, not UDP.
        assert_eq!(
            f,
            vec![Flow {
                client: sock("10.77.0.100:57394"),
                vip: sock("10.77.0.50:9000"),
                backend: sock("10.77.0.200:9000"),
            }]
        );
    }

    #[test]
    fn a_seed_message_has_the_tuples_and_the_source_nat() {
        let flow = Flow {
            client: sock("10.77.0.100:57394"),
            vip: sock("10.77.0.50:9000"),
            backend: sock("10.77.0.200:9000"),
        };
        let m = message(&flow, 7);
        let len = u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize;
        assert_eq!(len, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 1 << 8);
        assert_eq!(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), 7);
        assert_eq!(m[16], AF_INET);
        let body = &m[20..];
        // The original tuple first: client then VIP, ports in network
        // order.
        assert_eq!(
            u16::from_ne_bytes([body[2], body[3]]),
            CTA_TUPLE_ORIG | NLA_F_NESTED
        );
        let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&[10, 77, 0, 100]) && contains(&[10, 77, 0, 200]));
        assert!(contains(&57394u16.to_be_bytes()));
        // The NAT range is the VIP alone, the client's port alone.
        let nat = body
            .windows(4)
            .position(|w| w[2..4] == (CTA_NAT_SRC | NLA_F_NESTED).to_ne_bytes())
            .map(|at| &body[at..]);
        let nat = nat.unwrap_or_default();
        assert!(nat.windows(4).any(|w| w == [10, 77, 0, 50]));
        assert!(nat.windows(2).any(|w| w == 57394u16.to_be_bytes()));
    }
}
