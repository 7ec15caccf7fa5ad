//! The Raft peer transport over tonic (`lb.peer.v1.Peer`).
//!
//! Sending: one task per peer and lane owns the connection. The ordinary
//! lane keeps one client stream open and feeds it every message in order;
//! the snapshot lane opens its own connection per snapshot, so a snapshot of
//! many megabytes never queues in front of heartbeats. A broken connection
//! is retried with capped exponential backoff, and the node is told (peer
//! unreachable, snapshot failed) so Raft stops pipelining into the void.
//!
//! Receiving: every envelope must carry this cluster's id, come from a
//! current member, be addressed to this member and hold a message that
//! decodes; anything else is refused with a log line naming the peer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto::peer::v1::peer_client::PeerClient;
use proto::peer::v1::peer_server::{Peer, PeerServer};
use proto::peer::v1::{Envelope, SendAck};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::node::{Input, Outbox};
use super::replica::Stamp;
use crate::model::State;

/// Largest message accepted: a snapshot of a 50,000-service table with ten
/// backends each is about 20 MB.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Who may talk to this member: the cluster id and the current members.
#[derive(Debug, Clone)]
struct Gate {
    cluster_id: String,
    me: u64,
    members: watch::Receiver<Arc<State>>,
}

/// The receiving side: a tonic service that feeds the node thread.
#[derive(Debug, Clone)]
pub struct PeerService {
    gate: Gate,
    inputs: Sender<Input>,
}

impl PeerService {
    pub fn new(
        cluster_id: String,
        me: u64,
        members: watch::Receiver<Arc<State>>,
        inputs: Sender<Input>,
    ) -> Self {
        Self {
            gate: Gate {
                cluster_id,
                me,
                members,
            },
            inputs,
        }
    }

    /// Checks one envelope; the error says what is wrong, naming the peer.
    /// With mutual TLS, `certs` is the chain the peer presented, and the
    /// envelope's sender must be the member its certificate names. A beat
    /// (no Raft message) gives None.
    fn admit(
        &self,
        envelope: &Envelope,
        remote: Option<SocketAddr>,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Option<Message>, String> {
        let peer = format!(
            "member {} at {}",
            envelope.from,
            remote.map_or("?".into(), |a| a.to_string())
        );
        if envelope.cluster_id != self.gate.cluster_id {
            return Err(format!(
                "{peer}: cluster id {:?} is not this cluster's {:?}",
                envelope.cluster_id, self.gate.cluster_id
            ));
        }
        if !self
            .gate
            .members
            .borrow()
            .members()
            .contains_key(&envelope.from)
        {
            return Err(format!("{peer}: not a member of this cluster"));
        }
        if let Some(certs) = certs {
            certificate_names_member(certs, envelope.from).map_err(|e| format!("{peer}: {e}"))?;
        }
        if envelope.to != self.gate.me {
            return Err(format!(
                "{peer}: message for member {}, this is member {}",
                envelope.to, self.gate.me
            ));
        }
        if envelope.hears.len() != envelope.hears_applied.len() {
            return Err(format!(
                "{peer}: {} members heard but {} applied indexes",
                envelope.hears.len(),
                envelope.hears_applied.len()
            ));
        }
        if envelope.message.is_empty() {
            return Ok(None);
        }
        let message = Message::parse_from_bytes(&envelope.message)
            .map_err(|e| format!("{peer}: undecodable raft message: {e}"))?;
        if message.from != envelope.from || message.to != envelope.to {
            return Err(format!(
                "{peer}: envelope and message disagree on sender or receiver"
            ));
        }
        Ok(Some(message))
    }
}

impl PeerService {
    /// Whether the leaf of `certs` names a current member other than this
    /// one: who may send anything at all.
    fn names_another_member(&self, certs: &[CertificateDer<'static>]) -> Result<(), String> {
        let members = self.gate.members.borrow();
        if members
            .members()
            .keys()
            .any(|id| *id != self.gate.me && certificate_names_member(certs, *id).is_ok())
        {
            Ok(())
        } else {
            Err("its certificate names no other member of this cluster".into())
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<SendAck>, Status> {
        let remote = request.remote_addr();
        let certs = request.peer_certs();
        // With mutual TLS the sender is known before any message is read:
        // a certificate of the CA that names no other member (lbctl's, a
        // removed member's) is refused here, before a message of up to
        // 256 MiB would be buffered to find out who sent it.
        if let Some(certs) = certs.as_deref()
            && let Err(reason) = self.names_another_member(certs)
        {
            let reason = format!(
                "peer at {}: {reason}",
                remote.map_or("?".into(), |a| a.to_string())
            );
            warn!(reason = %reason, "peer connection refused before reading");
            return Err(Status::permission_denied(reason));
        }
        let mut stream = request.into_inner();
        loop {
            let envelope = match stream.next().await {
                None => return Ok(Response::new(SendAck {})),
                Some(Ok(e)) => e,
                Some(Err(status)) => {
                    debug!(peer = ?remote, error = %status, "peer stream ended");
                    return Err(status);
                }
            };
            match self.admit(&envelope, remote, certs.as_deref().map(Vec::as_slice)) {
                Ok(message) => {
                    let stamp = Stamp {
                        incarnation: envelope.incarnation,
                        tick: envelope.tick,
                        echo_incarnation: envelope.echo_incarnation,
                        echo_tick: envelope.echo_tick,
                        leaving: envelope.leaving,
                        unready: envelope.unready,
                        applied: envelope.applied,
                        hears: envelope
                            .hears
                            .iter()
                            .copied()
                            .zip(envelope.hears_applied.iter().copied())
                            .collect(),
                    };
                    let input = match message {
                        Some(m) => Input::Raft(Box::new(m), stamp),
                        None => Input::Beat(envelope.from, stamp),
                    };
                    if self.inputs.send(input).is_err() {
                        return Err(Status::unavailable("member is stopping"));
                    }
                }
                Err(reason) => {
                    warn!(reason = %reason, "peer message refused");
                    return Err(Status::permission_denied(reason));
                }
            }
        }
    }
}

/// The DNS name a member's certificate must carry to speak for member `id`
/// on the peer port (deploy/tls/make-certs.sh puts it there).
pub fn member_tls_name(id: u64) -> String {
    format!("member-{id}")
}

/// Why dialing member `to` failed in TLS, in words for the log, found in
/// the error's chain of sources; `None` when TLS is not the cause (a member
/// down or unreachable is normal and logged at debug level).
pub fn dial_failure(e: &(dyn std::error::Error + 'static), to: u64) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let mut source = Some(e);
    while let Some(err) = source {
        // An io::Error's source() skips the error it wraps: look inside.
        let tls = err.downcast_ref::<E>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<E>())
        });
        if let Some(tls) = tls {
            return Some(match tls {
                E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                    format!("member {to}'s certificate is not signed by the cluster's CA (tls.ca)")
                }
                E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    format!(
                        "member {to}'s certificate does not name {} (is another member at its address?)",
                        member_tls_name(to)
                    )
                }
                E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    format!("member {to}'s certificate has expired")
                }
                E::InvalidCertificate(other) => {
                    format!("member {to}'s certificate was refused: {other:?}")
                }
                E::AlertReceived(
                    alert @ (A::UnknownCA
                    | A::BadCertificate
                    | A::CertificateUnknown
                    | A::CertificateExpired
                    | A::CertificateRequired
                    | A::DecryptError),
                ) => format!(
                    "member {to} refused this member's certificate (alert {alert:?}): its tls.ca is another CA, or this certificate expired"
                ),
                E::InvalidMessage(_) => {
                    format!("member {to} did not speak TLS (its config has no [tls]?)")
                }
                other => format!("TLS with member {to}: {other}"),
            });
        }
        source = err.source();
    }
    None
}

/// Whether the leaf of `certs` (already verified against the cluster CA by
/// TLS) names member `id`: without this, any certificate of the CA (another
/// member's, or lbctl's) could speak for any member.
fn certificate_names_member(certs: &[CertificateDer<'static>], id: u64) -> Result<(), String> {
    let name = member_tls_name(id);
    let leaf = certs
        .first()
        .ok_or_else(|| "no client certificate presented".to_owned())?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("its certificate does not parse: {e}"))?;
    let server_name = ServerName::try_from(name.as_str())
        .map_err(|e| format!("member name {name:?} is not a DNS name: {e}"))?;
    cert.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| {
            format!(
                "its certificate does not name {name:?}: a peer certificate must carry DNS:{name} to speak for member {id}"
            )
        })
}

/// Serves the peer port on `listener` until `shutdown`.
pub async fn serve(
    listener: crate::listener::GuardedListener,
    service: PeerService,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        .add_service(PeerServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES));
    listener.serve(router, tls, shutdown).await
}

/// The sending side: routes each message to its peer's lane.
#[derive(Debug, Clone)]
pub struct PeerOutbox {
    inner: Arc<OutboxInner>,
}

#[derive(Debug)]
struct OutboxInner {
    cluster_id: String,
    me: u64,
    members: watch::Receiver<Arc<State>>,
    inputs: Sender<Input>,
    lanes: Mutex<HashMap<u64, Lanes>>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

#[derive(Debug)]
struct Lanes {
    address: String,
    ordinary: mpsc::UnboundedSender<(Option<Message>, Stamp)>,
    snapshots: mpsc::UnboundedSender<(Option<Message>, Stamp)>,
}

impl PeerOutbox {
    pub fn new(
        cluster_id: String,
        me: u64,
        members: watch::Receiver<Arc<State>>,
        inputs: Sender<Input>,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Self {
        Self {
            inner: Arc::new(OutboxInner {
                cluster_id,
                me,
                members,
                inputs,
                lanes: Mutex::new(HashMap::new()),
                runtime,
                shutdown,
                tls,
            }),
        }
    }
}

impl Outbox for PeerOutbox {
    fn send(&self, message: Message, stamp: Stamp) {
        let to = message.to;
        self.inner.queue(to, Some(message), stamp);
    }

    fn beat(&self, to: u64, stamp: Stamp) {
        self.inner.queue(to, None, stamp);
    }
}

impl OutboxInner {
    /// Queues a message (or, with None, a beat) on the lane to `to`.
    fn queue(&self, to: u64, message: Option<Message>, stamp: Stamp) {
        let inner = self;
        let Some(address) = inner.members.borrow().members().get(&to).cloned() else {
            debug!(peer = to, "no address for peer; message dropped");
            let _ = inner.inputs.send(Input::Unreachable(to));
            return;
        };
        let mut lanes = inner.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lane = lanes
            .entry(to)
            .or_insert_with(|| inner.open_lanes(to, address.clone()));
        if lane.address != address {
            // The member moved: new connections to the new address.
            *lane = inner.open_lanes(to, address);
        }
        let snapshot = message
            .as_ref()
            .is_some_and(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let sent = if snapshot {
            lane.snapshots.send((message, stamp))
        } else {
            lane.ordinary.send((message, stamp))
        };
        if sent.is_err() {
            let _ = inner.inputs.send(if snapshot {
                Input::SnapshotSent { to, ok: false }
            } else {
                Input::Unreachable(to)
            });
        }
    }

    fn open_lanes(&self, to: u64, address: String) -> Lanes {
        let (ordinary, ordinary_rx) = mpsc::unbounded_channel();
        let (snapshots, snapshots_rx) = mpsc::unbounded_channel();
        let lane = LaneTask {
            cluster_id: self.cluster_id.clone(),
            me: self.me,
            to,
            address: address.clone(),
            inputs: self.inputs.clone(),
            shutdown: self.shutdown.clone(),
            tls: self.tls.clone(),
        };
        self.runtime.spawn(lane.clone().run_ordinary(ordinary_rx));
        self.runtime.spawn(lane.run_snapshots(snapshots_rx));
        Lanes {
            address,
            ordinary,
            snapshots,
        }
    }
}

#[derive(Debug, Clone)]
struct LaneTask {
    cluster_id: String,
    me: u64,
    to: u64,
    address: String,
    inputs: Sender<Input>,
    shutdown: CancellationToken,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl LaneTask {
    /// The envelope of a message, or of a beat (no message).
    fn envelope(&self, (message, stamp): &(Option<Message>, Stamp)) -> Option<Envelope> {
        let bytes = match message {
            Some(m) => m.write_to_bytes(),
            None => Ok(Vec::new()),
        };
        match bytes {
            Ok(bytes) => Some(Envelope {
                cluster_id: self.cluster_id.clone(),
                from: self.me,
                to: self.to,
                message: bytes,
                incarnation: stamp.incarnation,
                tick: stamp.tick,
                echo_incarnation: stamp.echo_incarnation,
                echo_tick: stamp.echo_tick,
                leaving: stamp.leaving,
                unready: stamp.unready,
                hears: stamp.hears.iter().map(|(m, _)| *m).collect(),
                hears_applied: stamp.hears.iter().map(|(_, a)| *a).collect(),
                applied: stamp.applied,
            }),
            Err(e) => {
                warn!(peer = self.to, error = %e, "cannot encode raft message");
                None
            }
        }
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{}", self.address))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            // The member at the other end must prove it is member `to`.
            endpoint = endpoint.tls_config(tls.clone().domain_name(member_tls_name(self.to)))?;
        }
        Ok(endpoint)
    }

    fn client(&self, channel: Channel) -> PeerClient<Channel> {
        PeerClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Ordinary messages: one long-lived stream, reconnected with backoff.
    async fn run_ordinary(self, mut queue: mpsc::UnboundedReceiver<(Option<Message>, Stamp)>) {
        let mut backoff = BACKOFF_MIN;
        // The TLS cause last warned of, and when: the same cause is
        // repeated once a minute, not at every retry.
        let mut warned: Option<(String, std::time::Instant)> = None;
        loop {
            let channel = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                c = async { anyhow::Ok(self.endpoint()?.connect().await?) } => c,
            };
            let channel = match channel {
                Ok(c) => c,
                Err(e) => {
                    match dial_failure(e.as_ref(), self.to) {
                        Some(why)
                            if warned.as_ref().is_none_or(|(last, at)| {
                                *last != why || at.elapsed() >= Duration::from_secs(60)
                            }) =>
                        {
                            warn!(peer = self.to, address = %self.address, "cannot connect to peer: {why}");
                            warned = Some((why, std::time::Instant::now()));
                        }
                        _ => {
                            debug!(peer = self.to, address = %self.address, error = %e, "cannot connect to peer")
                        }
                    }
                    // Messages queued meanwhile are lost; raft resends.
                    let mut dropped = false;
                    while queue.try_recv().is_ok() {
                        dropped = true;
                    }
                    if dropped {
                        let _ = self.inputs.send(Input::Unreachable(self.to));
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            warned = None;
            info!(peer = self.to, address = %self.address, "connected to peer");
            let (tx, rx) = mpsc::unbounded_channel();
            let mut client = self.client(channel);
            let call =
                tokio::spawn(async move { client.send(UnboundedReceiverStream::new(rx)).await });
            // Feed the stream until it breaks.
            loop {
                let message = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    m = queue.recv() => match m { Some(m) => m, None => return },
                };
                let Some(envelope) = self.envelope(&message) else {
                    continue;
                };
                if tx.send(envelope).is_err() || call.is_finished() {
                    break;
                }
            }
            match call.await {
                Ok(Err(status)) => match dial_failure(&status, self.to) {
                    Some(why) => warn!(peer = self.to, "peer stream broken: {why}; reconnecting"),
                    None => {
                        warn!(peer = self.to, error = %status.message(), "peer stream broken; reconnecting")
                    }
                },
                _ => debug!(peer = self.to, "peer stream ended; reconnecting"),
            }
            let _ = self.inputs.send(Input::Unreachable(self.to));
        }
    }

    /// Snapshots: each on its own connection; the node learns the outcome.
    async fn run_snapshots(self, mut queue: mpsc::UnboundedReceiver<(Option<Message>, Stamp)>) {
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                m = queue.recv() => match m { Some(m) => m, None => return },
            };
            let Some(envelope) = self.envelope(&message) else {
                let _ = self.inputs.send(Input::SnapshotSent {
                    to: self.to,
                    ok: false,
                });
                continue;
            };
            let bytes = envelope.message.len();
            let result = async {
                let channel = self.endpoint()?.connect().await?;
                let mut client = self.client(channel);
                client
                    .send(tokio_stream::iter([envelope]))
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                anyhow::Ok(())
            }
            .await;
            let ok = result.is_ok();
            match result {
                Ok(()) => info!(peer = self.to, bytes, "snapshot sent"),
                Err(e) => warn!(peer = self.to, error = %e, "snapshot not sent"),
            }
            let _ = self.inputs.send(Input::SnapshotSent { to: self.to, ok });
        }
    }
}

/// Addresses of every member but `me`, for logs.
pub fn peers_of(state: &State, me: u64) -> BTreeMap<u64, String> {
    state
        .members()
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, a.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error as tonic wraps it: the rustls error some sources down.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn named(e: rustls::Error) -> Option<String> {
        let wrapped = Wrapped(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        dial_failure(&wrapped, 2)
    }

    #[test]
    fn a_failed_dial_names_its_tls_cause() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let said = |e| named(e).unwrap_or_default();
        assert!(
            said(E::InvalidCertificate(C::UnknownIssuer))
                .contains("not signed by the cluster's CA")
        );
        assert!(said(E::InvalidCertificate(C::NotValidForName)).contains("does not name member-2"));
        assert!(
            said(E::AlertReceived(A::CertificateRequired))
                .contains("member 2 refused this member's certificate")
        );
        assert!(
            said(E::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
            .contains("did not speak TLS")
        );
        // Not TLS: nothing to name (a member down is normal).
        let refused = Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(dial_failure(&refused, 2), None);
    }
}
