//! `[cluster]` and `[tls]`: the Raft cluster a member belongs to, and the
//! certificates of its admin and peer ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, parse_duration, relative_to};

/// The Raft cluster this member belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Carried in every peer message; a member refuses another cluster's.
    pub id: String,
    /// The Raft log and snapshots.
    pub data_dir: PathBuf,
    /// The peer (Raft) port.
    pub listen: SocketAddr,
    /// Raft's clock.
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_after_entries: u64,
    /// The members a new cluster starts with: (id, peer address).
    pub initial_members: Vec<(u64, String)>,
    /// Their admin API addresses, where given: a follower sends clients
    /// there to reach the leader.
    pub initial_admin: BTreeMap<u64, String>,
}

/// Mutual TLS for the admin and peer ports: certificates in PEM, read at
/// start.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The cluster CA: peers and admin clients must present a certificate
    /// it signed.
    pub ca_pem: Vec<u8>,
    /// This member's certificate (server and client) and key.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig { .. }")
    }
}

impl TlsConfig {
    /// The TLS side of the admin and peer servers (see
    /// `GuardedListener::into_tls_stream`). The files were checked at
    /// load; an error names the field all the same.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        server_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
            .map(|c| tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(c)))
            .map_err(|(field, why)| format!("{field} {why}"))
    }

    pub fn client(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(crate::listener::tls::TLS_SERVER_NAME)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    id: String,
    data_dir: PathBuf,
    listen: String,
    #[serde(default = "default_tick")]
    tick: String,
    #[serde(default = "default_election_ticks")]
    election_ticks: usize,
    #[serde(default = "default_heartbeat_ticks")]
    heartbeat_ticks: usize,
    #[serde(default = "default_snapshot_after_entries")]
    snapshot_after_entries: u64,
    member: Vec<RawMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: u64,
    address: String,
    admin: Option<String>,
}

// A heartbeat every 50 ms and an election timeout of 500 ms, on a 10 ms
// clock: the finer clock spreads the randomized election timeouts over 25
// values instead of 5, so two survivors of a leader's crash rarely stand
// for election in the same tick and split the vote (which costs another
// election timeout).
fn default_tick() -> String {
    "10ms".into()
}
fn default_election_ticks() -> usize {
    50
}
fn default_heartbeat_ticks() -> usize {
    5
}
fn default_snapshot_after_entries() -> u64 {
    10_000
}

/// Reads the certificates `[tls]` names; each must be a readable PEM file.
pub(super) fn read_tls(t: RawTls, file: &Path) -> Result<TlsConfig, ConfigError> {
    let read = |field: &str, path: PathBuf| {
        let path = relative_to(file, path);
        let bytes = std::fs::read(&path).map_err(|e| {
            ConfigError::new(file, field, format!("cannot read {}: {e}", path.display()))
        })?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ConfigError::new(
                file,
                field,
                format!("{} is not a PEM file", path.display()),
            ));
        }
        Ok(bytes)
    };
    let tls = TlsConfig {
        ca_pem: read("tls.ca", t.ca)?,
        cert_pem: read("tls.cert", t.cert)?,
        key_pem: read("tls.key", t.key)?,
    };
    server_config(&tls.ca_pem, &tls.cert_pem, &tls.key_pem)
        .map_err(|(field, why)| ConfigError::new(file, field, why))?;
    Ok(tls)
}

/// The TLS server's configuration: the member's certificate and key, and
/// client certificates required, verified against the cluster's CA. Built
/// at load to check the files (an error names the field; found by the
/// server, a bad pair said "transport error: keys may not be consistent"),
/// and again at start for the one acceptor of the admin and peer ports.
fn server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ServerConfig, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject as _;
    let pems = |field, pem| {
        rustls_pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (field, format!("is not a PEM certificate: {e}")))
            .and_then(|certs| {
                if certs.is_empty() {
                    Err((field, "holds no certificate".into()))
                } else {
                    Ok(certs)
                }
            })
    };
    let certs = pems("tls.cert", cert_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in pems("tls.ca", ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| ("tls.ca", format!("is not a usable CA certificate: {e}")))?;
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ("tls.key", format!("is not a PEM private key: {e}")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .map_err(|e| ("tls.ca", format!("cannot verify clients with it: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls.cert", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => (
                "tls.key",
                "does not belong to the certificate in tls.cert (another member's key?)".into(),
            ),
            other => ("tls.key", format!("cannot be used with tls.cert: {other}")),
        })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

pub(super) fn validate_cluster(
    c: RawCluster,
    node_id: u64,
    file: &Path,
) -> Result<ClusterConfig, ConfigError> {
    if c.id.trim().is_empty() {
        return Err(ConfigError::new(file, "cluster.id", "must not be empty"));
    }
    let listen: SocketAddr = c.listen.parse().map_err(|_| {
        ConfigError::new(
            file,
            "cluster.listen",
            format!(
                "{:?} is not an address:port like \"10.0.0.1:9444\"",
                c.listen
            ),
        )
    })?;
    let tick = parse_duration(&c.tick, file, "cluster.tick")?;
    if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&tick) {
        return Err(ConfigError::new(
            file,
            "cluster.tick",
            "must be between 10ms and 1s",
        ));
    }
    if c.heartbeat_ticks == 0 {
        return Err(ConfigError::new(
            file,
            "cluster.heartbeat_ticks",
            "must be 1 or more",
        ));
    }
    if c.election_ticks <= c.heartbeat_ticks {
        return Err(ConfigError::new(
            file,
            "cluster.election_ticks",
            format!(
                "must be more than heartbeat_ticks ({}); 10 times is usual",
                c.heartbeat_ticks
            ),
        ));
    }
    if c.snapshot_after_entries == 0 {
        return Err(ConfigError::new(
            file,
            "cluster.snapshot_after_entries",
            "must be 1 or more",
        ));
    }
    if c.member.is_empty() {
        return Err(ConfigError::new(
            file,
            "cluster.member",
            "a cluster needs its initial members",
        ));
    }
    let mut initial_members = Vec::with_capacity(c.member.len());
    let mut initial_admin = BTreeMap::new();
    for (i, m) in c.member.into_iter().enumerate() {
        let at = format!("cluster.member[{i}]");
        if m.id == 0 {
            return Err(ConfigError::new(
                file,
                format!("{at}.id"),
                "must be 1 or more",
            ));
        }
        if initial_members.iter().any(|(id, _)| *id == m.id) {
            return Err(ConfigError::new(
                file,
                format!("{at}.id"),
                format!("member {} is listed twice", m.id),
            ));
        }
        let port_ok = m.address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !port_ok {
            return Err(ConfigError::new(
                file,
                format!("{at}.address"),
                format!("{:?} is not a host:port", m.address),
            ));
        }
        if let Some(admin) = m.admin {
            let admin_ok = admin.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !admin_ok {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.admin"),
                    format!("{admin:?} is not a host:port"),
                ));
            }
            initial_admin.insert(m.id, admin);
        }
        initial_members.push((m.id, m.address));
    }
    if !initial_members.iter().any(|(id, _)| *id == node_id) {
        tracing::info!(
            node = node_id,
            "this member is not among the initial members: it waits to be added"
        );
    }
    Ok(ClusterConfig {
        id: c.id,
        data_dir: relative_to(file, c.data_dir),
        listen,
        tick,
        election_ticks: c.election_ticks,
        heartbeat_ticks: c.heartbeat_ticks,
        snapshot_after_entries: c.snapshot_after_entries,
        initial_members,
        initial_admin,
    })
}
