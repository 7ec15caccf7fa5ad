//! lbctl's grammar: the flags, subcommands and their arguments, and
//! what they turn into (endpoint URLs, a timeout, the TLS settings).

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lbctl",
    version,
    about = "Admin command line of the lb-node appliance"
)]
pub(crate) struct Args {
    /// Admin API of a member, host:port or a URL; repeat to try several in
    /// turn (the next one is tried when a member cannot be reached, does
    /// not answer within --timeout, or says it is not the leader).
    #[arg(long, short, global = true, default_value = "127.0.0.1:9443")]
    pub(crate) endpoint: Vec<String>,
    /// How long one member has to answer (connecting included) before the
    /// next endpoint is tried: "5s", "500ms". `events` streams without a
    /// deadline once connected.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout)]
    pub(crate) timeout: Duration,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// The cluster CA (PEM): turns on mutual TLS, with --cert and --key.
    #[arg(long, global = true, env = "LBCTL_CA", requires_all = ["cert", "key"])]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), signed by the cluster CA.
    #[arg(long, global = true, env = "LBCTL_CERT")]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// This client's key (PEM).
    #[arg(long, global = true, env = "LBCTL_KEY")]
    pub(crate) key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration like \"5s\" or \"500ms\""))
}

/// An endpoint as given (`host:port`, `http://host:port`,
/// `https://host:port`) as a URL, or why it is not one.
pub(crate) fn endpoint_url(endpoint: &str) -> Result<String, String> {
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    match url.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.port_u16().is_some() =>
        {
            Ok(url)
        }
        _ => Err(format!(
            "--endpoint {endpoint:?} is not host:port (\"127.0.0.1:9443\") or a URL with a port (\"https://lb-1:9443\")"
        )),
    }
}

/// The mutual TLS settings from the flags, if any.
pub(crate) fn tls(args: &Args) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
        return Ok(None);
    };
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("--{flag} {}: {e}", p.display()))
    };
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca", ca)?))
            .identity(Identity::from_pem(read("cert", cert)?, read("key", key)?))
            .domain_name("lb-node"),
    ))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// What the member is and does: cluster, source, state and dataplane.
    Status,
    /// The service table, or one service with its backends.
    Services {
        /// Only the matching services, with their backends: a name
        /// ("shop/web:http"), a Kubernetes Service ("shop/web": all its
        /// ports), or an address ("192.0.2.1:80", "192.0.2.1").
        name: Option<String>,
    },
    /// Override one backend of a service (replicated; survives failover).
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Every VIP with its owner, and which members announce it now (each
    /// member is asked through its admin API).
    Vips,
    /// Hand leadership to a member.
    TransferLeadership {
        /// The member to lead.
        to: u64,
    },
    /// Add or remove cluster members.
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Snapshot the member's state and compact its log now.
    Snapshot,
    /// Stream what happens on the member until interrupted.
    Events,
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub(crate) enum BackendAction {
    /// No new connections to the backend; open ones go on.
    Drain { service: String, backend: String },
    /// Take the backend back with the source's weight (clears any override).
    Undrain { service: String, backend: String },
    /// Use this weight instead of the source's.
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum MemberAction {
    /// Add a member, a voter or (--learner) a learner. Start it first
    /// (with the cluster's members in its config): its peer address is
    /// checked to answer before it is added, since a voter nobody can
    /// reach counts against the quorum.
    Add {
        /// The new member's node.id (1 or more, not used by another).
        id: u64,
        /// Its cluster.listen address as the others reach it (host:port).
        peer_address: String,
        /// Its admin API (host:port), where followers send clients.
        #[arg(long)]
        admin: Option<String>,
        /// Add it even if its peer address does not answer now.
        #[arg(long)]
        force: bool,
        /// Add it as a learner: it replicates the table, programs it and
        /// announces (owns VIPs, or every VIP in BGP ECMP mode), but never
        /// votes nor leads. Scales the data plane out beyond 3 or 5
        /// voters.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's node.id.
        id: u64,
    },
    /// Make a voter a learner (not the leader: transfer leadership first).
    Demote {
        /// The voter's node.id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// The member's node.id.
        id: u64,
    },
    /// Drain a member before maintenance: its VIPs move to the others.
    Drain {
        /// The member's node.id.
        id: u64,
    },
    /// Let a drained member own VIPs again.
    Undrain {
        /// The member's node.id.
        id: u64,
    },
}
