//! `lbctl`: the admin command line of the load-balancer appliance. One
//! subcommand per admin call; readable tables by default, `-o json` for
//! scripts; several `--endpoint`s are tried in turn.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use proto::admin::v1 as pb;
use proto::admin::v1::admin_client::AdminClient;
use proto::state::v1 as state;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(
    name = "lbctl",
    version,
    about = "Admin command line of the lb-node appliance"
)]
struct Args {
    /// Admin API of a member, host:port or a URL; repeat to try several in
    /// turn (the next one is tried when a member cannot be reached, does
    /// not answer within --timeout, or says it is not the leader).
    #[arg(long, short, global = true, default_value = "127.0.0.1:9443")]
    endpoint: Vec<String>,
    /// How long one member has to answer (connecting included) before the
    /// next endpoint is tried: "5s", "500ms". `events` streams without a
    /// deadline once connected.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The cluster CA (PEM): turns on mutual TLS, with --cert and --key.
    #[arg(long, global = true, env = "LBCTL_CA", requires_all = ["cert", "key"])]
    ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), signed by the cluster CA.
    #[arg(long, global = true, env = "LBCTL_CERT")]
    cert: Option<std::path::PathBuf>,
    /// This client's key (PEM).
    #[arg(long, global = true, env = "LBCTL_KEY")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration like \"5s\" or \"500ms\""))
}

/// An endpoint as given (`host:port`, `http://host:port`,
/// `https://host:port`) as a URL, or why it is not one.
fn endpoint_url(endpoint: &str) -> Result<String, String> {
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
fn tls(args: &Args) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
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
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
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
enum BackendAction {
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
enum MemberAction {
    /// Add a voting member. Start it first (with the cluster's members in
    /// its config): its peer address is checked to answer before it is
    /// added, since a voter nobody can reach counts against the quorum.
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

/// `println!` that survives a closed pipe: `lbctl services | head` ends
/// quietly when the reader has what it wants, instead of panicking on
/// "failed printing to stdout". Any other write error ends lbctl with
/// status 1.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(e)
        }
    }};
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("lbctl: cannot write to stdout: {e}");
    std::process::exit(1)
}

/// Exit codes (documented in docs/operations.md and the README).
const EXIT_UNREACHABLE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Completion { shell } = &args.command {
        let mut script = Vec::new();
        clap_complete::generate(
            *shell,
            &mut <Args as clap::CommandFactory>::command(),
            "lbctl",
            &mut script,
        );
        use std::io::Write as _;
        if let Err(e) = std::io::stdout().write_all(&script) {
            stdout_failed(e);
        }
        return ExitCode::SUCCESS;
    }
    let tls = match tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lbctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut queue = std::collections::VecDeque::new();
    for e in &args.endpoint {
        match endpoint_url(e) {
            Ok(url) => queue.push_back(url),
            Err(why) => {
                eprintln!("lbctl: {why}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Command::Member {
        action:
            MemberAction::Add {
                id,
                peer_address,
                force: false,
                ..
            },
    } = &args.command
        && let Err(why) = peer_answers(*id, peer_address).await
    {
        eprintln!("lbctl: {why}; start the member first, or add it anyway with --force");
        return ExitCode::from(EXIT_REFUSED);
    }
    let mut last_error = String::from("no endpoint given");
    let mut timed_out = false;
    // Endpoints to try, in order; a follower's hint puts the leader first.
    let mut tried = std::collections::BTreeSet::new();
    let streams = matches!(args.command, Command::Events);
    while let Some(endpoint) = queue.pop_front() {
        if !tried.insert(endpoint.clone()) || tried.len() > 16 {
            continue;
        }
        let endpoint = &endpoint;
        // One deadline for connecting and the call (a member whose disk
        // froze accepts the connection and never answers); a stream has it
        // for connecting and its first answer only.
        let attempt = async {
            let channel = connect(endpoint, tls.clone())
                .await
                .map_err(Failure::Connect)?;
            let mut client = AdminClient::new(channel);
            call(
                &mut client,
                &args,
                tls.clone(),
                streams.then_some(args.timeout),
            )
            .await
            .map_err(Failure::Status)
        };
        let result = if streams {
            attempt.await
        } else {
            tokio::time::timeout(args.timeout, attempt)
                .await
                .unwrap_or(Err(Failure::Timeout))
        };
        timed_out = matches!(result, Err(Failure::Timeout));
        let status = match result {
            Ok(()) => return ExitCode::SUCCESS,
            Err(Failure::Connect(e)) => {
                last_error = format!("{endpoint}: {e}");
                continue;
            }
            Err(Failure::Timeout) => {
                last_error = format!("{endpoint}: no answer within {:?}", args.timeout);
                continue;
            }
            // Failed in the connection, not in the member: the next one.
            Err(Failure::Status(status)) if is_transport(&status) => {
                last_error = format!("{endpoint}: {}", explain_status(&status, tls.is_some()));
                continue;
            }
            Err(Failure::Status(status)) => status,
        };
        match status.code() {
            tonic::Code::Unavailable => last_error = format!("{endpoint}: {}", status.message()),
            // A follower names the leader; another endpoint may be it.
            tonic::Code::FailedPrecondition if status.message().contains("not the leader") => {
                last_error = format!("{endpoint}: {}", status.message());
                if let Some(leader) = status
                    .message()
                    .split("leader admin API at ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    && let Ok(url) = endpoint_url(leader)
                {
                    queue.push_front(url);
                }
            }
            code => {
                eprintln!("lbctl: {endpoint}: {}", status.message());
                return ExitCode::from(match code {
                    tonic::Code::NotFound => EXIT_NOT_FOUND,
                    tonic::Code::DeadlineExceeded => EXIT_TIMEOUT,
                    tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::AlreadyExists => EXIT_REFUSED,
                    _ => 1,
                });
            }
        }
    }
    eprintln!("lbctl: no member could answer: {last_error}");
    ExitCode::from(if timed_out {
        EXIT_TIMEOUT
    } else {
        EXIT_UNREACHABLE
    })
}

/// Whether a call failed in the connection rather than in the member.
fn is_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Why one endpoint did not do.
enum Failure {
    Connect(String),
    Timeout,
    Status(tonic::Status),
}

/// Whether a new member's peer address takes a connection (within 2 s).
/// An id or address the member would refuse anyway is left to it (it
/// names the field).
async fn peer_answers(id: u64, peer_address: &str) -> Result<(), String> {
    if id == 0 {
        return Ok(());
    }
    let Ok(mut addresses) = tokio::net::lookup_host(peer_address).await else {
        return Ok(());
    };
    let Some(to) = addresses.next() else {
        return Ok(());
    };
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "member {id}'s peer address {peer_address} does not answer ({e})"
        )),
        Err(_) => Err(format!(
            "member {id}'s peer address {peer_address} does not answer (no connection within 2s)"
        )),
    }
}

/// Makes the call `args` asks for; `first_answer` bounds how long a
/// stream (`events`) waits for the member to take it.
async fn call(
    client: &mut AdminClient<Channel>,
    args: &Args,
    tls: Option<tonic::transport::ClientTlsConfig>,
    first_answer: Option<Duration>,
) -> Result<(), tonic::Status> {
    use pb::set_backend_override_request::Action;
    let out = args.output;
    match &args.command {
        Command::Status => print_status(
            &client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner(),
            out,
        ),
        Command::Services { name } => {
            let r = client
                .list_services(pb::ListServicesRequest {
                    name: name.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_services(&r, out, name.is_some());
        }
        Command::Backend { action } => {
            let (service, backend, action) = match action {
                BackendAction::Drain { service, backend } => {
                    (service, backend, Action::Drain(true))
                }
                BackendAction::Undrain { service, backend } => {
                    (service, backend, Action::Clear(true))
                }
                BackendAction::Weight {
                    service,
                    backend,
                    weight,
                } => (service, backend, Action::Weight(*weight)),
            };
            client
                .set_backend_override(pb::SetBackendOverrideRequest {
                    service: service.clone(),
                    backend: backend.clone(),
                    action: Some(action),
                })
                .await?;
            done(out, "ok");
        }
        Command::TransferLeadership { to } => {
            let r = client
                .transfer_leadership(pb::TransferLeadershipRequest { to: *to })
                .await?
                .into_inner();
            done(out, &format!("member {} leads", r.leader));
        }
        Command::Member {
            action:
                MemberAction::Add {
                    id,
                    peer_address,
                    admin,
                    ..
                },
        } => {
            client
                .add_member(pb::AddMemberRequest {
                    admin_address: admin.clone().unwrap_or_default(),
                    id: *id,
                    peer_address: peer_address.clone(),
                })
                .await?;
            done(out, &format!("member {id} added"));
        }
        Command::Member {
            action: MemberAction::Remove { id },
        } => {
            client
                .remove_member(pb::RemoveMemberRequest { id: *id })
                .await?;
            done(out, &format!("member {id} removed"));
        }
        Command::Vips => {
            let r = client.list_vips(pb::ListVipsRequest {}).await?.into_inner();
            let (announcers, unreachable) = announcers(client, tls).await?;
            let by = |vip: &str| -> Vec<u64> {
                announcers
                    .iter()
                    .filter(|(_, vips)| vips.contains(vip))
                    .map(|(id, _)| *id)
                    .collect()
            };
            match out {
                Output::Json => out!(
                    "{}",
                    json!({
                        "vips": r.vips.iter().map(|v| json!({"vip": v.vip, "owner": v.owner, "services": v.services, "announced_here": v.announced_here, "announced_by": by(&v.vip), "routed_by": v.routed_by})).collect::<Vec<_>>(),
                        "drained": r.drained,
                        "unreachable": unreachable.iter().map(|(id, e)| json!({"member": id, "error": e})).collect::<Vec<_>>(),
                    })
                ),
                Output::Table => {
                    out!(
                        "{:<40} {:<6} {:<13} SERVICES",
                        "VIP",
                        "OWNER",
                        "ANNOUNCED BY"
                    );
                    for v in &r.vips {
                        let owner = if v.owner == 0 {
                            "none".to_owned()
                        } else {
                            v.owner.to_string()
                        };
                        let by = by(&v.vip);
                        let by = if v.routed_by.starts_with("service CIDR") {
                            // Never announced on its own.
                            "-".to_owned()
                        } else if by.is_empty() {
                            "nobody".to_owned()
                        } else {
                            by.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                        };
                        let mut what = v.services.join(",");
                        if !v.routed_by.is_empty() {
                            if !what.is_empty() {
                                what.push(' ');
                            }
                            what.push_str(&format!("({})", v.routed_by));
                        }
                        out!("{:<40} {:<6} {:<13} {}", v.vip, owner, by, what);
                    }
                    for (id, e) in &unreachable {
                        out!("member {id} not asked: {e}");
                    }
                    if !r.drained.is_empty() {
                        out!("drained members: {:?}", r.drained);
                    }
                }
            }
        }
        Command::Member {
            action: MemberAction::Drain { id },
        } => {
            client
                .drain_member(pb::DrainMemberRequest {
                    id: *id,
                    drained: true,
                })
                .await?;
            done(out, &format!("member {id} drained"));
        }
        Command::Member {
            action: MemberAction::Undrain { id },
        } => {
            client
                .drain_member(pb::DrainMemberRequest {
                    id: *id,
                    drained: false,
                })
                .await?;
            done(out, &format!("member {id} undrained"));
        }
        Command::Snapshot => {
            let r = client
                .trigger_snapshot(pb::TriggerSnapshotRequest {})
                .await?
                .into_inner();
            done(
                out,
                &format!("snapshot at applied index {}", r.applied_index),
            );
        }
        Command::Events => {
            let request = client.watch_events(pb::WatchEventsRequest {});
            let answer = match first_answer {
                Some(t) => tokio::time::timeout(t, request).await.map_err(|_| {
                    tonic::Status::deadline_exceeded(format!("no answer within {t:?}"))
                })?,
                None => request.await,
            };
            let mut stream = answer?.into_inner();
            while let Some(event) = stream.message().await? {
                match out {
                    Output::Json => out!(
                        "{}",
                        json!({"time": rfc3339(event.unix_ms), "unix_ms": event.unix_ms, "kind": event.kind, "message": event.message, "revision": event.revision})
                    ),
                    Output::Table => {
                        out!(
                            "{} {:<9} {}",
                            clock(event.unix_ms),
                            event.kind,
                            event.message
                        )
                    }
                }
            }
        }
        Command::Completion { .. } => {}
    }
    Ok(())
}

fn done(out: Output, message: &str) {
    match out {
        Output::Json => out!("{}", json!({ "result": message })),
        Output::Table => out!("{message}"),
    }
}

/// Which VIPs each member announces now, asking every member whose admin
/// address the answering member knows (a standalone member: itself only);
/// and the members that could not be asked, with why.
type Announcers = (
    std::collections::BTreeMap<u64, std::collections::BTreeSet<String>>,
    Vec<(u64, String)>,
);

async fn announcers(
    client: &mut AdminClient<Channel>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Announcers, tonic::Status> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    let here = |r: pb::ListVipsResponse| -> std::collections::BTreeSet<String> {
        r.vips
            .into_iter()
            .filter(|v| v.announced_here)
            .map(|v| v.vip)
            .collect()
    };
    let mut announcers = std::collections::BTreeMap::new();
    let mut unreachable = Vec::new();
    let Some(cluster) = status.cluster else {
        let r = client.list_vips(pb::ListVipsRequest {}).await?.into_inner();
        announcers.insert(status.node_id, here(r));
        return Ok((announcers, unreachable));
    };
    for member in cluster.members {
        if member.id == status.node_id {
            let r = client.list_vips(pb::ListVipsRequest {}).await?.into_inner();
            announcers.insert(member.id, here(r));
            continue;
        }
        if member.admin_address.is_empty() {
            unreachable.push((member.id, "its admin address is not known".to_owned()));
            continue;
        }
        let endpoint = format!("http://{}", member.admin_address);
        let answer = match connect(&endpoint, tls.clone()).await {
            Ok(channel) => AdminClient::new(channel)
                .list_vips(pb::ListVipsRequest {})
                .await
                .map_err(|s| format!("{endpoint}: {}", s.message())),
            Err(e) => Err(format!("{endpoint}: {e}")),
        };
        match answer {
            Ok(r) => {
                announcers.insert(member.id, here(r.into_inner()));
            }
            Err(e) => unreachable.push((member.id, e)),
        }
    }
    Ok((announcers, unreachable))
}

async fn connect(
    endpoint: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    let tls_on = tls.is_some();
    let url = match (&tls, endpoint.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => endpoint.to_owned(),
    };
    let mut channel = Channel::from_shared(url)
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        channel = channel.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    channel.connect().await.map_err(|e| explain(&e, tls_on))
}

/// A failure in words: every cause in its chain, and for the TLS ones the
/// likely reason first ("transport error" alone says nothing).
fn explain(e: &(dyn std::error::Error + 'static), tls_on: bool) -> String {
    explain_chain(e.to_string(), e.source(), tls_on)
}

/// A call's failure in words, as `explain` (a status's own text is long:
/// its message stands for it).
fn explain_status(status: &tonic::Status, tls_on: bool) -> String {
    explain_chain(
        status.message().to_owned(),
        std::error::Error::source(status),
        tls_on,
    )
}

fn explain_chain(
    first: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
    tls_on: bool,
) -> String {
    let mut chain = vec![first];
    while let Some(s) = source {
        let text = s.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        source = s.source();
    }
    let all = chain.join(": ");
    match tls_reason(&all, tls_on) {
        Some(reason) => format!("{reason} ({all})"),
        None => all,
    }
}

/// The reason behind a TLS failure, from the words of its causes.
fn tls_reason(text: &str, tls_on: bool) -> Option<&'static str> {
    let t = text.to_ascii_lowercase().replace([' ', '_'], "");
    let has = |needle: &str| t.contains(needle);
    Some(if has("unknownissuer") || has("badsignature") {
        "the member's certificate is not signed by the CA given with --ca"
    } else if has("notvalidforname") || has("notvalidforcontext") {
        "the member's certificate does not name \"lb-node\", the name lbctl checks"
    } else if has("expired") || has("notvalidyet") {
        "a certificate is expired or not valid yet (check the dates and the clocks)"
    } else if has("certificaterequired") {
        "the member requires a client certificate: give --ca, --cert and --key"
    } else if has("unknownca") || has("badcertificate") || has("decrypterror") {
        "the member refused this client's certificate: it is not signed by the cluster's CA"
    } else if tls_on && (has("connectionclosed") || has("brokenpipe") || has("connectionreset")) {
        "the member closed the connection after the TLS handshake: most likely it refused this client's certificate (not signed by the cluster's CA)"
    } else if tls_on && (has("invalidcontenttype") || has("corruptmessage")) {
        "the member speaks plain HTTP/2 (it has no [tls]): leave out --ca, --cert and --key"
    } else if !tls_on
        && (has("connectionreset") || has("brokenpipe") || has("frameheader") || has("http2error"))
    {
        "the member may speak TLS: give --ca, --cert and --key"
    } else {
        return None;
    })
}

/// "1 route", "2 routes": a count and its noun, in the number it takes.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn when(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    format!("{:.1}s ago", (now - unix_ms).max(0) as f64 / 1000.0)
}

/// A Unix millisecond time in RFC 3339 ("2026-12-05T01:10:12.345Z"), for
/// JSON.
fn rfc3339(unix_ms: i64) -> String {
    clock(unix_ms).replacen(' ', "T", 1)
}

/// A Unix millisecond time as UTC wall-clock time, to the millisecond
/// ("2026-12-05 01:10:12.345Z").
fn clock(unix_ms: i64) -> String {
    let (secs, ms) = (unix_ms.div_euclid(1000), unix_ms.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // The civil date of a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn print_status(s: &pb::GetStatusResponse, output: Output) {
    let source = s.source.clone().unwrap_or_default();
    let dp = s.dataplane.clone().unwrap_or_default();
    match output {
        Output::Json => out!(
            "{}",
            json!({
                "node_id": s.node_id,
                "version": s.version,
                "revision": s.revision,
                "services": s.services,
                "source": {
                    "kind": source.kind,
                    "location": source.location,
                    "last_loaded_unix_ms": source.last_loaded_unix_ms,
                    "warnings": source.warnings,
                    "recent_warnings": source.recent_warnings.iter().map(|w| json!({
                        "unix_ms": w.unix_ms, "message": w.message,
                    })).collect::<Vec<_>>(),
                    "last_error": source.last_error,
                    "disconnected_since_unix_ms": source.disconnected_since_unix_ms,
                    "services_cursor": source.services_cursor,
                    "endpoint_slices_cursor": source.endpoint_slices_cursor,
                },
                "cluster": s.cluster.as_ref().map(|c| json!({
                    "cluster_id": c.cluster_id,
                    "role": c.role,
                    "term": c.term,
                    "leader": c.leader,
                    "commit_index": c.commit_index,
                    "applied_index": c.applied_index,
                    "voters": c.voters,
                    "drained": c.drained,
                    "members": c.members.iter().map(|m| json!({"id": m.id, "peer_address": m.peer_address, "admin_address": m.admin_address})).collect::<Vec<_>>(),
                    "lease_held": c.lease_held,
                    "may_announce": c.may_announce,
                    "peers": c.peers.iter().map(|p| json!({"id": p.id, "healthy": p.healthy, "match_index": p.match_index})).collect::<Vec<_>>(),
                })),
                "dataplane": {
                    "kind": dp.kind,
                    "last_sync_unix_ms": dp.last_sync_unix_ms,
                    "last_sync_ops": dp.last_sync_ops,
                    "last_error": dp.last_error,
                    "programmed_services": dp.programmed_services,
                    "programmed_destinations": dp.programmed_destinations,
                    "routes": dp.routes.as_ref().map(|r| json!({
                        "pod_routes": r.pod_routes,
                        "wanted": r.wanted,
                        "installed": r.installed,
                        "node_warning_count": r.node_warning_count,
                        "node_warnings": r.node_warnings,
                        "endpoints_checked": r.endpoints_checked,
                        "endpoints_unrouted": r.endpoints_unrouted,
                        "unrouted_examples": r.unrouted_examples,
                        "last_error": r.last_error,
                    })),
                },
                "bgp_peers": s.bgp_peers.iter().map(|p| json!({
                    "address": p.address,
                    "asn": p.asn,
                    "state": p.state,
                    "established_since_unix_ms": p.established_since_unix_ms,
                    "routes": p.routes,
                    "last_error": p.last_error,
                    "bfd_state": p.bfd_state,
                    "bfd_diagnostic": p.bfd_diagnostic,
                    "bfd_flaps": p.bfd_flaps,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Table => {
            out!("node       {} (lb-node {})", s.node_id, s.version);
            match &s.cluster {
                Some(c) => {
                    out!(
                        "cluster    {}: {} in term {}, leader {}, commit {}, applied {}",
                        c.cluster_id,
                        c.role,
                        c.term,
                        if c.leader == 0 {
                            "unknown".to_owned()
                        } else {
                            c.leader.to_string()
                        },
                        c.commit_index,
                        c.applied_index
                    );
                    for m in &c.members {
                        let voter = if c.voters.contains(&m.id) {
                            "voter"
                        } else {
                            "not voting"
                        };
                        // The leader's view of the others' health.
                        let health = c
                            .peers
                            .iter()
                            .find(|p| p.id == m.id)
                            .map(|p| {
                                format!(
                                    ", {}, holds up to {}",
                                    if p.healthy { "healthy" } else { "SILENT" },
                                    p.match_index
                                )
                            })
                            .unwrap_or_default();
                        let drained = if c.drained.contains(&m.id) {
                            ", DRAINED: owns no VIP"
                        } else {
                            ""
                        };
                        out!(
                            "  member   {} at {} ({voter}{health}{drained})",
                            m.id,
                            m.peer_address
                        );
                    }
                    out!(
                        "lease      {}",
                        match (c.lease_held, c.may_announce) {
                            (true, true) => "held; may announce",
                            (true, false) => "held; catching up before announcing",
                            (false, _) => "LOST: announces nothing",
                        }
                    );
                }
                None => out!("cluster    none (standalone)"),
            }
            out!("revision   {}", s.revision);
            out!("services   {}", s.services);
            // Only the leader reads the source: a follower that never
            // loaded it says so rather than "loaded never".
            let loaded = match &s.cluster {
                Some(c) if source.last_loaded_unix_ms == 0 && c.role != "leader" => {
                    "read by the leader only".to_owned()
                }
                _ => format!("loaded {}", when(source.last_loaded_unix_ms)),
            };
            out!(
                "source     {} {} ({loaded}){}",
                source.kind,
                source.location,
                if source.last_error.is_empty() {
                    String::new()
                } else {
                    format!("\n  error    {}", source.last_error)
                }
            );
            if source.disconnected_since_unix_ms > 0 {
                out!(
                    "  disconnected since {} (the table keeps serving)",
                    when(source.disconnected_since_unix_ms)
                );
            }
            if source.warnings > 0 {
                out!(
                    "  warnings {} (objects or fields left out, updates rejected); the last {}:",
                    source.warnings,
                    source.recent_warnings.len()
                );
                for w in &source.recent_warnings {
                    out!("    {} {}", clock(w.unix_ms), w.message);
                }
            }
            if !source.services_cursor.is_empty() || !source.endpoint_slices_cursor.is_empty() {
                out!(
                    "  cursors  services {}, endpointslices {}",
                    source.services_cursor,
                    source.endpoint_slices_cursor
                );
            }
            out!(
                "dataplane  {}: {}, {} (synced {}, {}){}",
                dp.kind,
                count(dp.programmed_services, "service"),
                count(dp.programmed_destinations, "destination"),
                when(dp.last_sync_unix_ms),
                count(dp.last_sync_ops, "change"),
                if dp.last_error.is_empty() {
                    String::new()
                } else {
                    format!("\n  error    {}", dp.last_error)
                }
            );
            if let Some(r) = dp
                .routes
                .as_ref()
                .filter(|r| r.pod_routes || r.endpoints_checked > 0)
            {
                print_routes(r);
            }
            for p in &s.bgp_peers {
                print_bgp_peer(p);
            }
        }
    }
}

/// A BGP peer's line of `status`: its session, its routes, its BFD.
fn print_bgp_peer(p: &pb::BgpPeerStatus) {
    let session = if p.state == "established" {
        format!(
            "established since {}, {}",
            when(p.established_since_unix_ms),
            count(p.routes, "route")
        )
    } else {
        p.state.to_uppercase()
    };
    let bfd = if p.bfd_state.is_empty() {
        "bfd off".to_owned()
    } else if p.bfd_state == "up" {
        format!("bfd up ({})", count(p.bfd_flaps, "flap"))
    } else {
        format!(
            "bfd {}{} ({})",
            p.bfd_state.to_uppercase(),
            if p.bfd_diagnostic.is_empty() {
                String::new()
            } else {
                format!(": {}", p.bfd_diagnostic)
            },
            count(p.bfd_flaps, "flap")
        )
    };
    out!("bgp peer   {} AS {}: {session}; {bfd}", p.address, p.asn);
    if p.state != "established" && !p.last_error.is_empty() {
        out!("  error    {}", p.last_error);
    }
}

/// The routes line of `status`: pod routes and endpoints without a route.
fn print_routes(r: &pb::RoutesStatus) {
    let mut parts = Vec::new();
    if r.pod_routes {
        parts.push(format!(
            "pod routes {} of {} installed",
            r.installed, r.wanted
        ));
    }
    if r.endpoints_checked > 0 {
        parts.push(if r.endpoints_unrouted == 0 {
            format!("all {} endpoints routed", r.endpoints_checked)
        } else {
            format!(
                "{} of {} endpoints WITHOUT A ROUTE{}",
                r.endpoints_unrouted,
                r.endpoints_checked,
                if r.pod_routes {
                    " (in no node's pod CIDR)"
                } else {
                    ""
                }
            )
        });
    }
    out!("routes     {}", parts.join("; "));
    if !r.unrouted_examples.is_empty() {
        out!("  unrouted {}", r.unrouted_examples.join(", "));
    }
    for w in &r.node_warnings {
        out!("  warning  {w}");
    }
    if r.node_warning_count > r.node_warnings.len() as u64 {
        out!(
            "  warning  and {} more",
            r.node_warning_count - r.node_warnings.len() as u64
        );
    }
    if !r.last_error.is_empty() {
        out!("  error    {}", r.last_error);
    }
}

fn ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .map(|b| IpAddr::from(b).to_string())
            .unwrap_or_default(),
        16 => <[u8; 16]>::try_from(bytes)
            .map(|b| IpAddr::from(b).to_string())
            .unwrap_or_default(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}

fn socket(bytes: &[u8], port: u32) -> String {
    if bytes.len() == 16 {
        format!("[{}]:{port}", ip(bytes))
    } else {
        format!("{}:{port}", ip(bytes))
    }
}

/// A protobuf enum value as its name without the type prefix, in lower
/// kebab case ("SCHEDULER_WRR" -> "wrr"); the number when unknown.
fn enum_name(value: i32, name: Option<&str>, prefix: &str) -> String {
    match name {
        Some(full) => full
            .strip_prefix(prefix)
            .unwrap_or(full)
            .to_ascii_lowercase()
            .replace('_', "-"),
        None => value.to_string(),
    }
}

fn protocol(p: i32) -> String {
    enum_name(
        p,
        state::Protocol::try_from(p).ok().map(|x| x.as_str_name()),
        "PROTOCOL_",
    )
}

fn scheduler(p: i32) -> String {
    enum_name(
        p,
        state::Scheduler::try_from(p).ok().map(|x| x.as_str_name()),
        "SCHEDULER_",
    )
}

fn forwarding(p: i32) -> String {
    enum_name(
        p,
        state::Forwarding::try_from(p).ok().map(|x| x.as_str_name()),
        "FORWARDING_",
    )
}

fn backend_state(p: i32) -> String {
    enum_name(
        p,
        state::BackendState::try_from(p)
            .ok()
            .map(|x| x.as_str_name()),
        "BACKEND_STATE_",
    )
}

fn override_text(
    overrides: &[state::BackendOverride],
    service: &state::VirtualService,
    b: &state::Backend,
) -> Option<String> {
    use state::backend_override::Action;
    overrides
        .iter()
        .find(|o| o.key == service.key && o.address == b.address && o.port == b.port)
        .and_then(|o| o.action)
        .map(|a| match a {
            Action::Drain(_) => "drained".to_owned(),
            Action::Weight(w) => format!("weight {w} (override)"),
        })
}

/// The override of `s`'s backend `b` for scripts: `null`, `{"action":
/// "drain"}` or `{"action": "weight", "weight": 7}`.
fn override_json(
    overrides: &[state::BackendOverride],
    service: &state::VirtualService,
    b: &state::Backend,
) -> serde_json::Value {
    use state::backend_override::Action;
    match overrides
        .iter()
        .find(|o| o.key == service.key && o.address == b.address && o.port == b.port)
        .and_then(|o| o.action)
    {
        None => serde_json::Value::Null,
        Some(Action::Drain(_)) => json!({ "action": "drain" }),
        Some(Action::Weight(w)) => json!({ "action": "weight", "weight": w }),
    }
}

/// The health of `s`'s backend `b`, if it is checked.
fn backend_health<'a>(
    health: &'a [pb::BackendHealth],
    s: &state::VirtualService,
    b: &state::Backend,
) -> Option<&'a pb::BackendHealth> {
    health
        .iter()
        .find(|h| h.key == s.key && h.address == b.address && h.port == b.port)
}

fn health_json(h: &pb::BackendHealth) -> serde_json::Value {
    use state::health_report::Verdict;
    json!({
        "down": h.down,
        "failing_open": h.failing_open,
        "probers": h.probers,
        "reports": h.reports.iter().map(|r| json!({
            "member": r.member,
            "down": r.verdict == Verdict::Down as i32,
            "since_unix_ms": r.since_unix_ms,
        })).collect::<Vec<_>>(),
        "local": (!h.local_state.is_empty()).then(|| json!({
            "state": h.local_state,
            "since_unix_ms": h.local_since_unix_ms,
            "last_ok": h.last_ok,
            "last_detail": h.last_detail,
            "last_latency_us": h.last_latency_us,
            "last_at_unix_ms": h.last_at_unix_ms,
        })),
    })
}

/// One line of a backend's health for the table: the verdict, who says
/// what, and this member's last probe.
fn health_text(h: &pb::BackendHealth) -> String {
    use state::health_report::Verdict;
    let verdict = match (h.down, h.failing_open) {
        (true, true) => "DOWN (every backend down: kept, failing open)",
        (true, false) => "DOWN",
        (false, _) => "up",
    };
    let reports: Vec<String> = h
        .reports
        .iter()
        .map(|r| {
            format!(
                "member {} says {} since {}",
                r.member,
                if r.verdict == Verdict::Down as i32 {
                    "down"
                } else {
                    "up"
                },
                clock(r.since_unix_ms as i64)
            )
        })
        .collect();
    let probers: Vec<String> = h.probers.iter().map(u64::to_string).collect();
    let mut text = format!(
        "health {verdict}; probed by {}",
        if probers.is_empty() {
            "-".to_owned()
        } else {
            probers.join(", ")
        }
    );
    if !reports.is_empty() {
        text += &format!("; {}", reports.join(", "));
    }
    if !h.local_state.is_empty() {
        text += &format!(
            "; here: {} ({}, {:.1} ms at {})",
            h.local_state,
            h.last_detail,
            h.last_latency_us as f64 / 1000.0,
            clock(h.last_at_unix_ms as i64)
        );
    }
    text
}

/// The kernel counters of `s`'s backend `b`, if the member sent them.
fn dest_counters<'a>(
    counters: &'a [pb::ServiceCounters],
    s: &state::VirtualService,
    b: &state::Backend,
) -> Option<&'a pb::DestinationCounters> {
    let backend = socket(&b.address, b.port);
    counters
        .iter()
        .find(|c| c.key == s.key)?
        .destinations
        .iter()
        .find(|d| d.backend == backend)
}

fn counters_json(c: Option<&pb::Counters>) -> serde_json::Value {
    let c = c.copied().unwrap_or_default();
    json!({
        "connections": c.connections,
        "packets_in": c.packets_in,
        "packets_out": c.packets_out,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "connections_per_second": c.connections_per_second,
        "bytes_in_per_second": c.bytes_in_per_second,
        "bytes_out_per_second": c.bytes_out_per_second,
    })
}

fn print_services(r: &pb::ListServicesResponse, output: Output, detailed: bool) {
    let (services, overrides, counters) = (&r.services, &r.overrides, &r.counters);
    match output {
        Output::Json => {
            let list: Vec<_> = services
                .iter()
                .map(|s| {
                    let key = s.key.clone().unwrap_or_default();
                    json!({
                        "name": s.name,
                        "vip": ip(&key.vip),
                        "port": key.port,
                        "protocol": protocol(key.protocol),
                        "scheduler": scheduler(s.scheduler),
                        "persistence_timeout": s.persistence_timeout,
                        "fwmark": s.fwmark,
                        "forwarding": forwarding(s.forwarding),
                        "allowed_sources": s.allowed_sources.iter().map(|n| format!("{}/{}", ip(&n.address), n.prefix_len)).collect::<Vec<_>>(),
                        "backends": s.backends.iter().map(|b| json!({
                            "address": ip(&b.address),
                            "port": b.port,
                            "weight": b.weight,
                            "state": backend_state(b.state),
                            "override": override_json(overrides, s, b),
                            "health": backend_health(&r.health, s, b).map(health_json),
                            "kernel": dest_counters(counters, s, b).map(|d| json!({
                                "weight": d.weight,
                                "active_connections": d.active_connections,
                                "inactive_connections": d.inactive_connections,
                                "counters": counters_json(d.counters.as_ref()),
                            })),
                        })).collect::<Vec<_>>(),
                        "kernel": counters.iter().find(|c| c.key == s.key).map(|c| counters_json(c.counters.as_ref())),
                    })
                })
                .collect();
            out!("{}", serde_json::Value::Array(list));
        }
        Output::Table => {
            // Columns as wide as their widest cell: long Kubernetes
            // names keep the table aligned.
            let rows: Vec<[String; 6]> = services
                .iter()
                .map(|s| {
                    let key = s.key.clone().unwrap_or_default();
                    let ready = s
                        .backends
                        .iter()
                        .filter(|b| b.state == state::BackendState::Ready as i32)
                        .count();
                    [
                        s.name.clone(),
                        protocol(key.protocol),
                        socket(&key.vip, key.port),
                        scheduler(s.scheduler),
                        forwarding(s.forwarding),
                        format!("{ready}/{}", s.backends.len()),
                    ]
                })
                .collect();
            let header =
                ["NAME", "PROTO", "VIP", "SCHED", "FORWARDING", "BACKENDS"].map(String::from);
            let mut widths = header.clone().map(|h| h.len());
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: &[String; 6]| {
                format!(
                    "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {:>w5$}",
                    cells[0],
                    cells[1],
                    cells[2],
                    cells[3],
                    cells[4],
                    cells[5],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3],
                    w4 = widths[4],
                    w5 = widths[5],
                )
            };
            out!("{}", line(&header));
            for (s, row) in services.iter().zip(&rows) {
                out!("{}", line(row));
                if detailed {
                    for b in &s.backends {
                        let extra = override_text(overrides, s, b)
                            .map(|t| format!("  [{t}]"))
                            .unwrap_or_default();
                        let kernel = dest_counters(counters, s, b)
                            .map(|d| {
                                let c = d.counters.unwrap_or_default();
                                format!(
                                    "  kernel: weight {} active {} inactive {} conns {} in {} B out {} B",
                                    d.weight,
                                    d.active_connections,
                                    d.inactive_connections,
                                    c.connections,
                                    c.bytes_in,
                                    c.bytes_out
                                )
                            })
                            .unwrap_or_default();
                        out!(
                            "  -> {:<40} weight {:<5} {}{extra}{kernel}",
                            socket(&b.address, b.port),
                            b.weight,
                            backend_state(b.state)
                        );
                        if let Some(h) = backend_health(&r.health, s, b) {
                            out!("     {}", health_text(h));
                        }
                    }
                }
            }
            if detailed && !r.counters_error.is_empty() {
                out!("(no kernel counters: {})", r.counters_error);
            }
        }
    }
}
