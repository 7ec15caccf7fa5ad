//! Many routes added or deleted in few system calls (issue 20): the VIPs
//! of a full sync are made local by one host route each, 50,000 of them at
//! 50,000 VIPs. Sent one request at a time through rtnetlink's handle (64
//! in flight, each acknowledged and read back as a future) they took
//! 10.5 s of a 47 s sync in the kernel lab; sent here in buffers of up to
//! 256 requests, the kernel handles each buffer's requests in order inside
//! the `send` call, exactly as `dataplane::ipvs::socket` does for IPVS.
//!
//! Only the last request of each buffer asks for an acknowledgement
//! (NLM_F_ACK): the kernel answers a request without it only when it
//! fails, so once the last one is acknowledged every earlier request of
//! the buffer without an error answer succeeded. Each failure comes back
//! with its request's sequence number, so it is told for its own route.
//!
//! Blocking: run it off the async runtime's threads.

use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;

/// Requests per buffer: each could fail, and every failure is an answer
/// (with its request: about 100 bytes) the receive buffer must hold.
const WINDOW: usize = 256;
/// Bytes per buffer, at most (a local host route takes about 60).
const SEND_CHUNK: usize = 64 * 1024;
/// How long the kernel may take to answer a buffer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// RTM_NEWROUTE with NLM_F_CREATE | NLM_F_EXCL: one already there is
    /// refused with EEXIST (the caller decides what that means).
    Add,
    /// RTM_DELROUTE.
    Delete,
}

/// Sends every route's request; returns each one's outcome in order (the
/// errno the kernel answered for a failure). An `Err` means the outcomes
/// are unknown (the socket failed): the caller treats every route as
/// failed and tries again later.
pub fn apply(change: Change, routes: Vec<RouteMessage>) -> std::io::Result<Vec<Result<(), i32>>> {
    let mut results: Vec<Option<Result<(), i32>>> = vec![None; routes.len()];
    if routes.is_empty() {
        return Ok(Vec::new());
    }
    let sock = open()?;
    let mut rx = vec![0u8; 256 * 1024];
    let mut buf = Vec::with_capacity(SEND_CHUNK + 4096);
    let flags = match change {
        Change::Add => NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        Change::Delete => NLM_F_REQUEST,
    };
    let mut routes = routes.into_iter().enumerate().peekable();
    while routes.peek().is_some() {
        buf.clear();
        let mut first = None;
        let mut last_start = 0;
        let mut last = 0;
        while let Some((i, route)) = routes.next_if(|_| buf.len() < SEND_CHUNK) {
            let first = *first.get_or_insert(i);
            last_start = buf.len();
            last = i;
            let payload = match change {
                Change::Add => RouteNetlinkMessage::NewRoute(route),
                Change::Delete => RouteNetlinkMessage::DelRoute(route),
            };
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            // Sequence numbers: the request's index, plus one (0 is the
            // kernel's own).
            header.sequence_number = seq_of(i);
            let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            message.finalize();
            buf.resize(last_start + message.buffer_len(), 0);
            message.serialize(&mut buf[last_start..]);
            if i + 1 - first >= WINDOW {
                break;
            }
        }
        let Some(first) = first else { break };
        // The buffer's last request asks for the acknowledgement: its
        // header's flags (bytes 6 and 7, native order) get NLM_F_ACK.
        let f = &mut buf[last_start + 6..last_start + 8];
        let with_ack = u16::from_ne_bytes([f[0], f[1]]) | NLM_F_ACK;
        f.copy_from_slice(&with_ack.to_ne_bytes());
        let n = sock.send(&buf, 0)?;
        if n != buf.len() {
            return Err(std::io::Error::other(format!(
                "short send: {n} of {}",
                buf.len()
            )));
        }
        let barrier = seq_of(last);
        'answers: loop {
            let n = {
                let mut into = &mut rx[..];
                sock.recv(&mut into, 0)?
            };
            let mut at = 0;
            while at + 16 <= n {
                let word = |o: usize| u32::from_ne_bytes([rx[o], rx[o + 1], rx[o + 2], rx[o + 3]]);
                let len = word(at) as usize;
                let kind = u16::from_ne_bytes([rx[at + 4], rx[at + 5]]);
                let seq = word(at + 8);
                if len < 16 || at + len > n {
                    return Err(std::io::Error::other("a malformed netlink answer"));
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code =
                        i32::from_ne_bytes([rx[at + 16], rx[at + 17], rx[at + 18], rx[at + 19]]);
                    let index = (seq as usize).wrapping_sub(1);
                    if (first..=last).contains(&index) {
                        results[index] = Some(if code == 0 { Ok(()) } else { Err(-code) });
                    }
                    if seq == barrier {
                        break 'answers;
                    }
                }
                // Messages are 4-byte aligned.
                at += (len + 3) & !3;
            }
        }
        for r in &mut results[first..=last] {
            r.get_or_insert(Ok(()));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Err(libc::EIO)))
        .collect())
}

/// The host route of type local that makes `ip` local in `table`,
/// through interface `index` (`ip route add local IP/32 dev DEV table T`).
pub fn local_route(table: u32, index: u32, ip: std::net::IpAddr) -> anyhow::Result<RouteMessage> {
    use anyhow::Context as _;
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    Ok(rtnetlink::RouteMessageBuilder::<std::net::IpAddr>::new()
        .destination_prefix(ip, prefix)
        .with_context(|| format!("local route {ip}"))?
        .table_id(table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .protocol(RouteProtocol::Static)
        .output_interface(index)
        .build())
}

fn seq_of(index: usize) -> u32 {
    (index as u32).wrapping_add(1)
}

fn open() -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let s = socket2::SockRef::from(&sock);
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    // Room for a whole buffer's failures with their requests.
    s.set_recv_buffer_size(1 << 20)?;
    Ok(sock)
}
