//! Adding and deleting elements of an nftables set over netlink, in one
//! transaction, without a process: what a change of one VIP costs the
//! masquerade table (issue 20: `nft -f` of the whole table took 228 ms with
//! 5,000 VIPs for each new VIP).
//!
//! The messages are nfnetlink's, as libnftnl builds them: a batch (BEGIN,
//! NEWSETELEM and/or DELSETELEM, END) for the nftables subsystem, each
//! element a nest `ELEM { KEY { VALUE bytes } }` in network order. The
//! kernel applies the batch whole or not at all; each message asks for an
//! acknowledgement, and the first error is returned. Deleting an element
//! that is not there fails the batch (ENOENT), as does a missing table or
//! set: the caller then reinstalls the whole table.

use std::net::IpAddr;
use std::time::Duration;

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// How long the kernel may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Elements per message: an attribute's length is 16 bits (an IPv6
/// element takes 32 bytes).
const PER_MESSAGE: usize = 1_500;
/// The largest batch sent: a netlink message must fit the socket's send
/// buffer (`net.core.wmem_default`, 208 KiB). A bigger change is the
/// caller's to make another way (lb-node replaces the whole table).
const MAX_BATCH: usize = 150 * 1024;

/// Why a change of set elements failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// The kernel refused the batch (nothing of it applied).
    #[error("nftables refused the change: {}", std::io::Error::from_raw_os_error(*.0))]
    Refused(i32),
    #[error("nftables netlink: {0}")]
    Io(String),
}

/// One set's changes: elements to add and to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange<'a> {
    pub set: &'a str,
    pub add: Vec<IpAddr>,
    pub delete: Vec<IpAddr>,
}

/// Appends one attribute (padded to 4 bytes).
pub(crate) fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose payload `fill` writes.
pub(crate) fn nest(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// Appends one netlink message with an nfgenmsg header.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn cstring(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// The batch for `changes` to sets of inet table `table`, sequence numbers
/// from `seq`; returns the bytes and the sequence numbers that must be
/// acknowledged.
pub fn batch(table: &str, changes: &[SetChange<'_>], seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let mut acked = Vec::new();
    let mut seq = seq;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for change in changes {
        for (elements, kind, flags) in [
            (&change.add, NFT_MSG_NEWSETELEM, NLM_F_CREATE),
            (&change.delete, NFT_MSG_DELSETELEM, 0),
        ] {
            for elements in elements.chunks(PER_MESSAGE) {
                let mut body = Vec::new();
                attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstring(table));
                attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstring(change.set));
                nest(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    for ip in elements {
                        nest(b, NFTA_LIST_ELEM, |b| {
                            nest(b, NFTA_SET_ELEM_KEY, |b| {
                                let bytes = match ip {
                                    IpAddr::V4(v4) => v4.octets().to_vec(),
                                    IpAddr::V6(v6) => v6.octets().to_vec(),
                                };
                                attr(b, NFTA_DATA_VALUE, &bytes);
                            });
                        });
                    }
                });
                seq = seq.wrapping_add(1);
                message(
                    &mut out,
                    (NFNL_SUBSYS_NFTABLES << 8) | kind,
                    NLM_F_REQUEST | NLM_F_ACK | flags,
                    seq,
                    NFPROTO_INET,
                    0,
                    &body,
                );
                acked.push(seq);
            }
        }
    }
    seq = seq.wrapping_add(1);
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (out, acked)
}

/// A netfilter netlink socket that waits at most ANSWER_TIMEOUT.
fn open() -> Result<Socket, SetError> {
    let io = |what: &str, e: std::io::Error| SetError::Io(format!("{what}: {e}"));
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| io("socket", e))?;
    sock.bind_auto().map_err(|e| io("bind", e))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| io("connect", e))?;
    socket2::SockRef::from(&sock)
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| io("SO_RCVTIMEO", e))?;
    Ok(sock)
}

fn send_all(sock: &Socket, bytes: &[u8]) -> Result<(), SetError> {
    let n = sock
        .send(bytes, 0)
        .map_err(|e| SetError::Io(format!("send: {e}")))?;
    if n != bytes.len() {
        return Err(SetError::Io(format!("short send: {n} of {}", bytes.len())));
    }
    Ok(())
}

fn recv(sock: &Socket, rx: &mut [u8]) -> Result<usize, SetError> {
    let mut buf = &mut rx[..];
    sock.recv(&mut buf, 0)
        .map_err(|e| SetError::Io(format!("recv: {e}")))
}

/// Applies `changes` to sets of inet table `table` in one transaction.
pub fn apply(table: &str, changes: &[SetChange<'_>]) -> Result<(), SetError> {
    let sock = open()?;
    let (bytes, mut waiting) = batch(table, changes, 1);
    if waiting.is_empty() {
        return Ok(());
    }
    if bytes.len() > MAX_BATCH {
        return Err(SetError::Io(format!(
            "a change of {} bytes is too big for one transaction",
            bytes.len()
        )));
    }
    send_all(&sock, &bytes)?;
    let mut rx = vec![0u8; 64 * 1024];
    let mut first_error = None;
    while !waiting.is_empty() {
        let n = recv(&sock, &mut rx)?;
        each_answer(&rx[..n], |kind, seq, payload| {
            if let Some(code) = error_code(kind, payload) {
                waiting.retain(|s| *s != seq);
                if code != 0 && first_error.is_none() {
                    first_error = Some(-code);
                }
            }
        })?;
        // An error aborts the batch: the kernel may not answer the rest.
        if let Some(errno) = first_error {
            return Err(SetError::Refused(errno));
        }
    }
    Ok(())
}

/// The nftables ruleset's generation in this network namespace: a number
/// the kernel moves on at every committed transaction, whoever made it
/// and whatever table it touched. Equal to what it was after a change of
/// lb-node's own means nothing changed nftables since, lb-node's table
/// included (how a repair skips reading the table back).
pub fn generation() -> Result<u32, SetError> {
    let sock = open()?;
    let mut out = Vec::new();
    message(
        &mut out,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        0,
        0,
        &[],
    );
    send_all(&sock, &out)?;
    let mut rx = vec![0u8; 8 * 1024];
    let mut id = None;
    loop {
        let n = recv(&sock, &mut rx)?;
        let mut answer = None;
        each_answer(&rx[..n], |kind, _, payload| {
            if let Some(code) = error_code(kind, payload) {
                answer.get_or_insert(if code != 0 {
                    Err(SetError::Refused(-code))
                } else {
                    id.ok_or_else(|| SetError::Io("no generation in the answer".into()))
                });
            } else if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                // After the 4-byte nfgenmsg header: the attributes.
                id = payload.get(4..).and_then(gen_id).or(id);
            }
        })?;
        if let Some(answer) = answer {
            return answer;
        }
    }
}

/// Calls `f` with each netlink message's type, sequence number and payload
/// (what follows the 16-byte header) in a datagram of answers.
fn each_answer(buf: &[u8], mut f: impl FnMut(u16, u32, &[u8])) -> Result<(), SetError> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let len = word(off) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(SetError::Io(format!("a malformed answer ({len} bytes)")));
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        f(kind, word(off + 8), &buf[off + 16..off + len]);
        off += len.next_multiple_of(4);
    }
    Ok(())
}

/// The error code of an NLMSG_ERROR answer (0: an acknowledgement).
fn error_code(kind: u16, payload: &[u8]) -> Option<i32> {
    (kind == NLMSG_ERROR && payload.len() >= 4)
        .then(|| i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]))
}

/// NFTA_GEN_ID (big-endian) among a NEWGEN answer's attributes.
fn gen_id(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFTA_GEN_ID && len >= 8 {
            return Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_framed_as_libnftnl_frames_it() {
        let changes = [SetChange {
            set: "masq4",
            add: vec!["10.0.0.1".parse().expect("ip")],
            delete: vec![],
        }];
        let (bytes, acked) = batch("lb_node", &changes, 7);
        assert_eq!(acked, vec![8]);
        // BEGIN (20 bytes), NEWSETELEM, END (20 bytes).
        let begin_len = u32::from_ne_bytes(bytes[0..4].try_into().expect("4"));
        assert_eq!(begin_len, 20);
        assert_eq!(
            u16::from_ne_bytes([bytes[4], bytes[5]]),
            NFNL_MSG_BATCH_BEGIN
        );
        assert_eq!(&bytes[18..20], &10u16.to_be_bytes(), "res_id: nftables");
        let msg = &bytes[20..];
        let len = u32::from_ne_bytes(msg[0..4].try_into().expect("4")) as usize;
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x0a0c);
        assert_eq!(msg[16], NFPROTO_INET);
        // table "lb_node\0" (8 bytes + 4), set "masq4\0" (6 + 4 -> 12),
        // elements: nest(4) > elem(4) > key(4) > value(4 + 4) = 20.
        assert_eq!(len, 16 + 4 + 12 + 12 + 20);
        assert_eq!(&msg[len - 4..len], &[10, 0, 0, 1], "the key, network order");
        let end = &bytes[20 + len..];
        assert_eq!(end.len(), 20);
        assert_eq!(u16::from_ne_bytes([end[4], end[5]]), NFNL_MSG_BATCH_END);
    }

    #[test]
    fn nothing_to_change_is_an_empty_batch() {
        let (_, acked) = batch("lb_node", &[SetChange::default()], 1);
        assert!(acked.is_empty());
    }
}
