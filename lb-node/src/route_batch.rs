//! Many routes added or deleted in few system calls (issue 20): the VIPs
//! of a full sync are made local by one host route each, 50,000 of them at
//! 50,000 VIPs. Sent one request at a time through rtnetlink's handle (64
//! in flight, each acknowledged and read back as a future) they took
//! 10.5 s of a 47 s sync in the kernel lab; sent here as IPVS requests are
//! (`netlink_batch`: up to 256 requests a buffer, only the last
//! acknowledged, each failure told for its own route), 1.8-2.4 s.
//!
//! Blocking: run it off the async runtime's threads.

use std::time::Duration;

use netlink_packet_core::{
    NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::netlink_batch::{self, SEND_CHUNK, fill_send};

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
    let (mut seq, mut next) = (0u32, 0usize);
    let mut routes = routes.into_iter().peekable();
    while routes.peek().is_some() {
        let filled = fill_send(
            &mut routes,
            &mut seq,
            &mut next,
            &mut buf,
            |route, seq, out| {
                let payload = match change {
                    Change::Add => RouteNetlinkMessage::NewRoute(route),
                    Change::Delete => RouteNetlinkMessage::DelRoute(route),
                };
                let mut header = NetlinkHeader::default();
                header.flags = flags;
                header.sequence_number = seq;
                let mut message =
                    NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
                message.finalize();
                let start = out.len();
                out.resize(start + message.buffer_len(), 0);
                message.serialize(&mut out[start..]);
            },
        );
        netlink_batch::settle(&sock, &mut rx, &buf, filled, &mut results)?;
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
