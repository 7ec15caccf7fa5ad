//! A blocking IPVS generic netlink socket with pipelined requests.
//!
//! Changes are packed many to one `send`, each with its own sequence
//! number; only the last of a `send` asks for an acknowledgement, and the
//! kernel answers the others only when they fail (matched by sequence
//! number). The kernel handles every message of a buffer even
//! when one fails, so one rejected operation never stops the others. A
//! missing answer (timeout) or ENOBUFS (answers dropped because the receive
//! buffer overflowed) leaves the outcome of the batch unknown: the caller
//! must dump and resync.
//!
//! Dumps (services, then each service's destinations) run one at a time: the
//! kernel keeps one dump in progress per socket.

use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};

use super::msg::{
    DaemonAttr, IpvsMessage, KernelDest, KernelKey, KernelService, SyncDaemon, TopAttr, cmd,
};

/// Requests per `send` at most: every one of them could fail, and each
/// failure is its own answer skb (about 1 KiB of receive buffer accounting;
/// SO_RCVBUF is capped by net.core.rmem_max, 416 KiB once doubled, by
/// default); more would overflow it (ENOBUFS) and lose answers.
const WINDOW: usize = 256;
/// Bytes of requests packed into one `send`.
const SEND_CHUNK: usize = 64 * 1024;
/// Requests from which `execute` encodes on another thread.
const PIPELINE_AT_LEAST: usize = 2 * WINDOW;
const RECV_BUFFER: usize = 8 * 1024 * 1024;
/// How long an answer may take before the batch counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to IPVS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpvsError {
    /// The running kernel has no IPVS (module not loaded or not built).
    #[error(
        "this kernel has no IPVS: the generic netlink family \"IPVS\" is not registered (load it with `modprobe ip_vs`, or use dataplane.kind = \"memory\")"
    )]
    NoIpvs,
    /// The socket failed, an answer was lost or the kernel dropped answers:
    /// the outcome of what was sent is unknown.
    #[error("IPVS netlink: {0}")]
    Io(String),
    /// The kernel refused a request (a negative errno).
    #[error("{}", errno_text(*.0))]
    Kernel(i32),
}

pub fn errno_text(errno: i32) -> String {
    let name = match errno {
        libc::EEXIST => "EEXIST",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "",
    };
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    if name.is_empty() {
        format!("kernel error {errno}: {text}")
    } else {
        format!("{name}: {text}")
    }
}

/// What GET_INFO answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// `IP_VS_VERSION_CODE`, e.g. 0x010201 for 1.2.1.
    pub version: u32,
    pub conn_tab_size: u32,
}

pub struct IpvsSocket {
    sock: Socket,
    family: u16,
    seq: u32,
    rx: Vec<u8>,
}

impl IpvsSocket {
    /// Opens a socket and looks the IPVS family up.
    pub fn open() -> Result<Self, IpvsError> {
        let io = |what: &str, e: std::io::Error| IpvsError::Io(format!("{what}: {e}"));
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(|e| io("socket", e))?;
        sock.bind_auto().map_err(|e| io("bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io("connect", e))?;
        sock.set_rx_buf_sz(RECV_BUFFER)
            .map_err(|e| io("SO_RCVBUF", e))?;
        // Answers without a copy of each request: smaller, so more fit.
        let _ = sock.set_cap_ack(true);
        set_recv_timeout(&sock, ANSWER_TIMEOUT).map_err(|e| io("SO_RCVTIMEO", e))?;
        let mut this = IpvsSocket {
            sock,
            family: 0,
            seq: 1,
            rx: vec![0; 1 << 20],
        };
        this.family = this.resolve_family()?;
        Ok(this)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        let mut genl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(super::msg::FAMILY_NAME.into())],
        });
        genl.finalize();
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let seq = self.next_seq();
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.send_all(&buf)?;
        let mut family = None;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let (len, mseq) = frame(&self.rx[off..n])?;
                if mseq == seq {
                    let m = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(
                        &self.rx[off..off + len],
                    )
                    .map_err(|e| IpvsError::Io(format!("family answer: {e}")))?;
                    match m.payload {
                        NetlinkPayload::InnerMessage(g) => {
                            for a in g.payload.nlas {
                                if let GenlCtrlAttrs::FamilyId(id) = a {
                                    family = Some(id);
                                }
                            }
                        }
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => family.ok_or(IpvsError::NoIpvs),
                                Some(c) if -c.get() == libc::ENOENT => Err(IpvsError::NoIpvs),
                                Some(c) => Err(IpvsError::Kernel(-c.get())),
                            };
                        }
                        _ => {}
                    }
                }
                off += len;
            }
        }
    }

    fn frame_request(&mut self, msg: IpvsMessage, flags: u16, out: &mut Vec<u8>) -> u32 {
        let seq = self.next_seq();
        frame_into(self.family, msg, flags, seq, out);
        seq
    }

    fn send_all(&self, buf: &[u8]) -> Result<(), IpvsError> {
        let n = self
            .sock
            .send(buf, 0)
            .map_err(|e| IpvsError::Io(format!("send: {e}")))?;
        if n != buf.len() {
            return Err(IpvsError::Io(format!("short send: {n} of {}", buf.len())));
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<usize, IpvsError> {
        let mut buf = &mut self.rx[..];
        match self.sock.recv(&mut buf, 0) {
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(IpvsError::Io(
                "answers dropped (ENOBUFS): the receive buffer overflowed".into(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(IpvsError::Io(format!(
                    "no answer within {ANSWER_TIMEOUT:?}"
                )))
            }
            Err(e) => Err(IpvsError::Io(format!("recv: {e}"))),
        }
    }

    /// GET_INFO: the IPVS version and connection table size.
    pub fn info(&mut self) -> Result<Info, IpvsError> {
        let answers = self.request(IpvsMessage::new(cmd::GET_INFO, vec![]), false)?;
        let mut info = Info {
            version: 0,
            conn_tab_size: 0,
        };
        for m in answers {
            for a in m.attrs {
                match a {
                    TopAttr::InfoVersion(v) => info.version = v,
                    TopAttr::InfoConnTabSize(v) => info.conn_tab_size = v,
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Sends one request (a dump when `dump`) and collects its answers.
    fn request(&mut self, msg: IpvsMessage, dump: bool) -> Result<Vec<IpvsMessage>, IpvsError> {
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let mut buf = Vec::new();
        let seq = self.frame_request(msg, flags, &mut buf);
        self.send_all(&buf)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let (len, mseq) = frame(&self.rx[off..n])?;
                if mseq != seq {
                    off += len;
                    continue;
                }
                let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(
                    &self.rx[off..off + len],
                )
                .map_err(|e| IpvsError::Io(format!("malformed answer: {e}")))?;
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.payload {
                    // A plain GET answers once, then ACKs (below).
                    NetlinkPayload::InnerMessage(g) => out.push(g.payload),
                    NetlinkPayload::Done(_) => {
                        if interrupted {
                            return Err(IpvsError::Io(
                                "the dump was interrupted by a concurrent change".into(),
                            ));
                        }
                        return Ok(out);
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(c) => Err(IpvsError::Kernel(-c.get())),
                        };
                    }
                    _ => {}
                }
                off += len;
            }
        }
    }

    /// Every virtual service.
    pub fn services(&mut self) -> Result<Vec<KernelService>, IpvsError> {
        self.request(IpvsMessage::new(cmd::GET_SERVICE, vec![]), true)?
            .into_iter()
            .filter_map(|m| m.service().transpose())
            .collect::<Result<_, _>>()
            .map_err(|e| IpvsError::Io(format!("malformed service in a dump: {e}")))
    }

    /// One service, with its counters; `None` if the kernel has no such
    /// service.
    pub fn service(&mut self, key: &KernelKey) -> Result<Option<KernelService>, IpvsError> {
        match self.request(
            IpvsMessage::new(cmd::GET_SERVICE, vec![TopAttr::Service(key.attrs())]),
            false,
        ) {
            Ok(answers) => answers
                .into_iter()
                .find_map(|m| m.service().transpose())
                .transpose()
                .map_err(|e| IpvsError::Io(format!("malformed service {key}: {e}"))),
            Err(IpvsError::Kernel(libc::ESRCH | libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The destinations of one service.
    pub fn dests(&mut self, key: &KernelKey) -> Result<Vec<KernelDest>, IpvsError> {
        let v6 = matches!(key, KernelKey::Addr { vip, .. } if vip.is_ipv6())
            || matches!(key, KernelKey::Fwmark { ipv6: true, .. });
        self.request(
            IpvsMessage::new(cmd::GET_DEST, vec![TopAttr::Service(key.attrs())]),
            true,
        )?
        .into_iter()
        .filter_map(|m| m.dest(v6).transpose())
        .collect::<Result<_, _>>()
        .map_err(|e| IpvsError::Io(format!("malformed destination of {key} in a dump: {e}")))
    }

    /// The connection-sync daemons running in this network namespace.
    pub fn sync_daemons(&mut self) -> Result<Vec<SyncDaemon>, IpvsError> {
        self.request(IpvsMessage::new(cmd::GET_DAEMON, vec![]), true)?
            .into_iter()
            .filter_map(|m| m.daemon().transpose())
            .collect::<Result<_, _>>()
            .map_err(|e| IpvsError::Io(format!("malformed sync daemon in a dump: {e}")))
    }

    /// Starts a connection-sync daemon (`EEXIST` if one in that role runs).
    pub fn start_sync_daemon(&mut self, daemon: &SyncDaemon) -> Result<(), IpvsError> {
        self.request(
            IpvsMessage::new(cmd::NEW_DAEMON, vec![TopAttr::Daemon(daemon.attrs())]),
            false,
        )
        .map(drop)
    }

    /// Stops the connection-sync daemon in that role (`daemon_state`).
    pub fn stop_sync_daemon(&mut self, state: u32) -> Result<(), IpvsError> {
        self.request(
            IpvsMessage::new(
                cmd::DEL_DAEMON,
                vec![TopAttr::Daemon(vec![DaemonAttr::State(state)])],
            ),
            false,
        )
        .map(drop)
    }

    /// Sends every request, pipelined, and returns each one's outcome in
    /// order: `Ok(())` or the errno the kernel answered. An `Err` for the
    /// whole call means some outcomes are unknown.
    ///
    /// Only the last request of each `send` asks for an acknowledgement
    /// (NLM_F_ACK): the kernel answers a request without it only when it
    /// fails, and handles a buffer's messages in order inside the `send`
    /// call, so the last one's acknowledgement says that every earlier one
    /// without an error answer succeeded. That spares the kernel an answer
    /// (an skb allocated, queued and read back) for every request that
    /// succeeds: most of a full sync's 550,000 at 50,000 x 10.
    pub fn execute<R>(&mut self, requests: Vec<R>) -> Result<Vec<Result<(), i32>>, IpvsError>
    where
        R: Into<IpvsMessage> + Send,
    {
        let total = requests.len();
        let mut results: Vec<Option<Result<(), i32>>> = vec![None; total];
        if total >= PIPELINE_AT_LEAST {
            self.execute_pipelined(requests, &mut results)?;
        } else {
            let mut pending = requests.into_iter().peekable();
            let mut buf = Vec::with_capacity(SEND_CHUNK + 4096);
            let mut next = 0usize;
            while pending.peek().is_some() {
                let (first, first_seq) = fill_send(
                    &mut pending,
                    self.family,
                    &mut self.seq,
                    &mut next,
                    &mut buf,
                );
                let barrier = self.seq;
                self.settle(&buf, first, first_seq, barrier, &mut results)?;
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(libc::EIO)))
            .collect())
    }

    /// `execute` for many requests: another thread builds and encodes the
    /// next sends while this one waits for the kernel's work on the
    /// current one, so the member's own cost overlaps the kernel's (a full
    /// sync's 550,000 requests: about 11 s of user and 16 s of system time
    /// on one thread in the kernel lab, one after the other before).
    fn execute_pipelined<R>(
        &mut self,
        requests: Vec<R>,
        results: &mut [Option<Result<(), i32>>],
    ) -> Result<(), IpvsError>
    where
        R: Into<IpvsMessage> + Send,
    {
        struct Chunk {
            buf: Vec<u8>,
            first: usize,
            first_seq: u32,
            barrier: u32,
        }
        let (family, start_seq, total) = (self.family, self.seq, requests.len());
        // Two sends encoded ahead at most; their buffers come back.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(2);
        let (back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let outcome = std::thread::scope(|scope| {
            let encoder = scope.spawn(move || {
                let cpu_before = super::thread_cpu();
                let mut seq = start_seq;
                let mut pending = requests.into_iter().peekable();
                let mut next = 0usize;
                while pending.peek().is_some() {
                    let mut buf = spare
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(SEND_CHUNK + 4096));
                    let (first, first_seq) =
                        fill_send(&mut pending, family, &mut seq, &mut next, &mut buf);
                    let chunk = Chunk {
                        buf,
                        first,
                        first_seq,
                        barrier: seq,
                    };
                    // The sender gave up (an answer lost): stop.
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
                cpu_before.zip(super::thread_cpu())
            });
            let mut settle_all = || -> Result<(), IpvsError> {
                for c in rx.iter() {
                    self.settle(&c.buf, c.first, c.first_seq, c.barrier, results)?;
                    let _ = back.send(c.buf);
                }
                Ok(())
            };
            let outcome = settle_all();
            // Unblocks the encoder if this side stopped early.
            drop(rx);
            if let Ok(Some(((u0, s0), (u1, s1)))) = encoder.join() {
                tracing::debug!(
                    requests = total,
                    user_s = ((u1 - u0) * 1e3).round() / 1e3,
                    system_s = ((s1 - s0) * 1e3).round() / 1e3,
                    "IPVS requests encoded: the CPU of the thread that built them"
                );
            }
            outcome
        });
        // The sequence numbers the encoder used, as `next_seq` counts.
        let mut seq = start_seq;
        for _ in 0..total {
            seq = seq.wrapping_add(1).max(1);
        }
        self.seq = seq;
        outcome
    }

    /// Sends one chunk whose requests are numbered from `first_seq` (the
    /// `first`th request of the call on), and reads answers until the
    /// acknowledgement of `barrier`: error answers before it name the
    /// requests that failed; every other request of the chunk succeeded.
    fn settle(
        &mut self,
        buf: &[u8],
        first: usize,
        first_seq: u32,
        barrier: u32,
        results: &mut [Option<Result<(), i32>>],
    ) -> Result<(), IpvsError> {
        self.send_all(buf)?;
        let count = barrier.wrapping_sub(first_seq) as usize + 1;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            let mut done = false;
            while off < n {
                let (len, mseq) = frame(&self.rx[off..n])?;
                let nb = NetlinkBuffer::new(&self.rx[off..off + len]);
                let idx = mseq.wrapping_sub(first_seq) as usize;
                if nb.message_type() == netlink_packet_core::NLMSG_ERROR && idx < count {
                    let p = nb.payload();
                    if p.len() < 4 {
                        return Err(IpvsError::Io("truncated acknowledgement".into()));
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
}

/// Frames one IPVS request with sequence number `seq` at the end of `out`.
fn frame_into(family: u16, msg: IpvsMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(family);
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let start = out.len();
    out.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut out[start..]);
}

/// Fills `buf` with the next send's requests from `pending` (at most
/// WINDOW, about SEND_CHUNK bytes), numbered on from `seq` as `next_seq`
/// counts, the last one asking for the acknowledgement; `next` counts the
/// requests taken so far. Returns the first one's index and number (the
/// last one's is `seq` after).
fn fill_send<R: Into<IpvsMessage>>(
    pending: &mut std::iter::Peekable<std::vec::IntoIter<R>>,
    family: u16,
    seq: &mut u32,
    next: &mut usize,
    buf: &mut Vec<u8>,
) -> (usize, u32) {
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
        frame_into(family, r.into(), NLM_F_REQUEST, *seq, buf);
        if *next == first {
            first_seq = *seq;
        }
        *next += 1;
    }
    ask_ack(buf, last_start);
    (first, first_seq)
}

/// Makes the request framed at `last_start` of `buf` (a send's last) ask
/// for the acknowledgement: its header's flags (bytes 6 and 7, native
/// order) get NLM_F_ACK.
fn ask_ack(buf: &mut [u8], last_start: usize) {
    let flags = &mut buf[last_start + 6..last_start + 8];
    let with_ack = u16::from_ne_bytes([flags[0], flags[1]]) | NLM_F_ACK;
    flags.copy_from_slice(&with_ack.to_ne_bytes());
}

/// The length and sequence number of the netlink message at the start of
/// `buf`, checked.
fn frame(buf: &[u8]) -> Result<(usize, u32), IpvsError> {
    let nb = NetlinkBuffer::new_checked(buf)
        .map_err(|e| IpvsError::Io(format!("malformed netlink message: {e}")))?;
    let len = nb.length() as usize;
    if len < 16 {
        return Err(IpvsError::Io(
            "netlink message shorter than its header".into(),
        ));
    }
    // Messages are 4-byte aligned within a datagram.
    let aligned = (len + 3) & !3;
    Ok((aligned.min(buf.len()), nb.sequence_number()))
}

fn set_recv_timeout(sock: &Socket, timeout: Duration) -> std::io::Result<()> {
    socket2::SockRef::from(sock).set_read_timeout(Some(timeout))
}
