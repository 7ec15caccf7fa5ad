//! Many netlink requests to one `send`, only the last acknowledged: the
//! mechanism under both of lb-node's big batches, IPVS requests
//! (`dataplane::ipvs::socket`) and VIP routes (`route_batch`) (issue 20).
//!
//! The kernel handles every message of a buffer in order inside the
//! `send` call, and answers a request without NLM_F_ACK only when it
//! fails, with the request's sequence number. So once the buffer's last
//! request (the only one asking) is acknowledged, every earlier one
//! without an error answer succeeded, and each failure is pinned on its
//! own request. One refused request never stops the others.
//!
//! Blocking: run it off the async runtime's threads.

use netlink_packet_core::{NLM_F_ACK, NLMSG_ERROR, NetlinkBuffer};
use netlink_sys::Socket;

/// Requests per `send` at most: every one of them could fail, and each
/// failure is its own answer the receive buffer must hold (about 1 KiB of
/// its accounting each).
pub const WINDOW: usize = 256;
/// Bytes of requests packed into one `send`, about.
pub const SEND_CHUNK: usize = 64 * 1024;

/// The requests of one buffer and where their numbers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// The index of its first request among all of the batch's.
    pub first: usize,
    /// The first request's sequence number.
    pub first_seq: u32,
    /// The last one's, the one acknowledged.
    pub barrier: u32,
}

/// Fills `buf` with the next send's requests from `pending` (at most
/// `WINDOW`, about `SEND_CHUNK` bytes), `frame` writing each one with its
/// sequence number at the end of the buffer; numbers go on from `seq`
/// (never 0, the kernel's own), `next` counts the requests taken so far.
/// The last one asks for the acknowledgement. Nothing pending: an empty
/// buffer.
pub fn fill_send<R>(
    pending: &mut std::iter::Peekable<impl Iterator<Item = R>>,
    seq: &mut u32,
    next: &mut usize,
    buf: &mut Vec<u8>,
    mut frame: impl FnMut(R, u32, &mut Vec<u8>),
) -> Filled {
    buf.clear();
    let first = *next;
    let mut first_seq = 0u32;
    let mut last_start = 0usize;
    while *next - first < WINDOW && buf.len() < SEND_CHUNK {
        let Some(r) = pending.next() else {
            break;
        };
        last_start = buf.len();
        *seq = seq.wrapping_add(1).max(1);
        frame(r, *seq, buf);
        if *next == first {
            first_seq = *seq;
        }
        *next += 1;
    }
    if buf.len() >= last_start + 8 {
        // The last request's header flags (bytes 6 and 7, native order)
        // get NLM_F_ACK.
        let flags = &mut buf[last_start + 6..last_start + 8];
        let with_ack = u16::from_ne_bytes([flags[0], flags[1]]) | NLM_F_ACK;
        flags.copy_from_slice(&with_ack.to_ne_bytes());
    }
    Filled {
        first,
        first_seq,
        barrier: *seq,
    }
}

/// Sends `buf` (filled as `filled` says) and reads answers into `rx`
/// until the acknowledgement of its last request: error answers before it
/// set their requests' outcomes in `results` (the errno), every other
/// request of the buffer succeeded. An `Err`: the outcomes are unknown.
pub fn settle(
    sock: &Socket,
    rx: &mut [u8],
    buf: &[u8],
    filled: Filled,
    results: &mut [Option<Result<(), i32>>],
) -> std::io::Result<()> {
    let Filled {
        first,
        first_seq,
        barrier,
    } = filled;
    send(sock, buf)?;
    let count = barrier.wrapping_sub(first_seq) as usize + 1;
    loop {
        let n = {
            let mut into = &mut rx[..];
            sock.recv(&mut into, 0)?
        };
        let mut off = 0;
        let mut done = false;
        while off < n {
            let (len, mseq) = frame(&rx[off..n])?;
            let nb = NetlinkBuffer::new(&rx[off..off + len]);
            let idx = mseq.wrapping_sub(first_seq) as usize;
            if nb.message_type() == NLMSG_ERROR && idx < count {
                let p = nb.payload();
                if p.len() < 4 {
                    return Err(std::io::Error::other("truncated acknowledgement"));
                }
                let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                if let Some(slot) = results.get_mut(first + idx) {
                    *slot = Some(if code == 0 { Ok(()) } else { Err(-code) });
                }
                done |= mseq == barrier;
            }
            off += len;
        }
        if done {
            break;
        }
    }
    let end = (first + count).min(results.len());
    for slot in &mut results[first..end] {
        slot.get_or_insert(Ok(()));
    }
    Ok(())
}

/// Sends `buf` whole, in one datagram.
pub fn send(sock: &Socket, buf: &[u8]) -> std::io::Result<()> {
    let n = sock.send(buf, 0)?;
    if n != buf.len() {
        return Err(std::io::Error::other(format!(
            "short send: {n} of {}",
            buf.len()
        )));
    }
    Ok(())
}

/// The length (aligned, within `buf`) and sequence number of the netlink
/// message at the start of `buf`, checked.
pub fn frame(buf: &[u8]) -> std::io::Result<(usize, u32)> {
    let nb = NetlinkBuffer::new_checked(buf)
        .map_err(|e| std::io::Error::other(format!("malformed netlink message: {e}")))?;
    let len = nb.length() as usize;
    if len < 16 {
        return Err(std::io::Error::other(
            "netlink message shorter than its header",
        ));
    }
    // Messages are 4-byte aligned within a datagram.
    let aligned = (len + 3) & !3;
    Ok((aligned.min(buf.len()), nb.sequence_number()))
}
