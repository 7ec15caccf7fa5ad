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
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};

use crate::netlink_batch::{self, Filled, SEND_CHUNK, WINDOW, fill_send};

use super::msg::{
    DaemonAttr, IpvsMessage, KernelDest, KernelKey, KernelService, SyncDaemon, TopAttr, cmd,
};

/// A request that can be framed into a send buffer (`encode.rs` frames
/// lb-node's own requests in place, any other message the generic way).
pub trait Framed {
    /// Writes the request with these netlink flags and sequence number at
    /// the end of `out`, for the IPVS generic netlink family `family`.
    fn frame(self, family: u16, flags: u16, seq: u32, out: &mut Vec<u8>);
}

/// Requests from which `execute` encodes on another thread.
const PIPELINE_AT_LEAST: usize = 2 * WINDOW;
// `netlink_batch::WINDOW` requests per send at most: each failure is its
// own answer skb (about 1 KiB of receive buffer accounting; SO_RCVBUF is
// capped by net.core.rmem_max, 416 KiB once doubled, by default); more
// would overflow it (ENOBUFS) and lose answers.
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
        msg.frame(self.family, flags, seq, out);
        seq
    }

    fn send_all(&self, buf: &[u8]) -> Result<(), IpvsError> {
        netlink_batch::send(&self.sock, buf).map_err(io_error)
    }

    fn recv(&mut self) -> Result<usize, IpvsError> {
        let mut buf = &mut self.rx[..];
        self.sock.recv(&mut buf, 0).map_err(io_error)
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
        R: Framed + Send,
    {
        let total = requests.len();
        let mut results: Vec<Option<Result<(), i32>>> = vec![None; total];
        if total >= PIPELINE_AT_LEAST {
            self.execute_pipelined(requests, &mut results)?;
        } else {
            let mut pending = requests.into_iter().peekable();
            let mut buf = Vec::with_capacity(SEND_CHUNK + 4096);
            let mut next = 0usize;
            let family = self.family;
            while pending.peek().is_some() {
                let filled = fill_send(
                    &mut pending,
                    &mut self.seq,
                    &mut next,
                    &mut buf,
                    |r, seq, out| r.frame(family, NLM_F_REQUEST, seq, out),
                );
                self.settle(&buf, filled, &mut results)?;
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
        R: Framed + Send,
    {
        struct Chunk {
            buf: Vec<u8>,
            filled: Filled,
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
                    let filled = fill_send(
                        &mut pending,
                        &mut seq,
                        &mut next,
                        &mut buf,
                        |r, seq, out| r.frame(family, NLM_F_REQUEST, seq, out),
                    );
                    let chunk = Chunk { buf, filled };
                    // The sender gave up (an answer lost): stop.
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
                cpu_before.zip(super::thread_cpu())
            });
            let mut settle_all = || -> Result<(), IpvsError> {
                for c in rx.iter() {
                    self.settle(&c.buf, c.filled, results)?;
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

    /// Sends one buffer of requests and reads the answers until its
    /// last one's acknowledgement (`netlink_batch::settle`).
    fn settle(
        &mut self,
        buf: &[u8],
        filled: Filled,
        results: &mut [Option<Result<(), i32>>],
    ) -> Result<(), IpvsError> {
        netlink_batch::settle(&self.sock, &mut self.rx, buf, filled, results).map_err(io_error)
    }
}

/// The length and sequence number of the netlink message at the start of
/// `buf`, checked.
fn frame(buf: &[u8]) -> Result<(usize, u32), IpvsError> {
    netlink_batch::frame(buf).map_err(|e| IpvsError::Io(e.to_string()))
}

fn set_recv_timeout(sock: &Socket, timeout: Duration) -> std::io::Result<()> {
    socket2::SockRef::from(sock).set_read_timeout(Some(timeout))
}

/// What a failed send or receive means for the batch.
fn io_error(e: std::io::Error) -> IpvsError {
    match e.raw_os_error() {
        Some(libc::ENOBUFS) => {
            IpvsError::Io("answers dropped (ENOBUFS): the receive buffer overflowed".into())
        }
        _ if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) =>
        {
            IpvsError::Io(format!("no answer within {ANSWER_TIMEOUT:?}"))
        }
        _ => IpvsError::Io(format!("netlink: {e}")),
    }
}
