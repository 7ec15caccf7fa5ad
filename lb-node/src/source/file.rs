//! The standalone source: a services file (TOML), as keepalived or Seesaw
//! users write them. Documented field by field in
//! `deploy/examples/services.toml`.
//!
//! `parse_services` is pure and checks every field; `run` is the task that
//! reloads the file on SIGHUP and when its content changes, and proposes only
//! the difference. A file that fails to parse on reload is logged with the
//! service and field and changes nothing: the running table stays.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::clock::unix_ms;
use crate::config::{ConfigError, FileSourceConfig, parse_toml};
use crate::model::{
    Backend, BackendState, Forwarding, InvalidService, Protocol, Scheduler, State, VirtualService,
    commands_towards,
};
use crate::replication::Proposer;
use crate::source::SourceStatus;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: String,
    port: i64,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default = "default_scheduler")]
    scheduler: String,
    #[serde(default)]
    persistence_timeout: i64,
    #[serde(default)]
    fwmark: i64,
    #[serde(default = "default_forwarding")]
    forwarding: String,
    #[serde(default)]
    allowed_sources: Vec<String>,
    /// "65001:100", "65001:1:2" or a well-known name, for the VIP's route.
    #[serde(default)]
    bgp_communities: Vec<String>,
    #[serde(default)]
    backend: Vec<RawBackend>,
    /// Active health checks of the backends (issue 22).
    health_check: Option<crate::health::settings::RawHealthCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    port: Option<i64>,
    #[serde(default = "default_weight")]
    weight: i64,
    #[serde(default = "default_state")]
    state: String,
}

fn default_protocol() -> String {
    "tcp".into()
}
fn default_scheduler() -> String {
    "wlc".into()
}
fn default_forwarding() -> String {
    "masquerade".into()
}
fn default_weight() -> i64 {
    1
}
fn default_state() -> String {
    "ready".into()
}

/// Refuses a file larger than `max` bytes before reading it.
fn check_size(file: &Path, len: u64, max: u64) -> Result<(), ConfigError> {
    if len > max {
        return Err(ConfigError::new(
            file,
            "",
            format!(
                "is {len} bytes; a services file may have at most {max} ({} MiB, source.file.max_size_mib): parsing takes about 35 times its size in memory. Serve larger tables from Kubernetes",
                max >> 20
            ),
        ));
    }
    Ok(())
}

/// Reads and checks a services file of at most `max_bytes`.
pub fn load_services(
    file: &Path,
    max_bytes: u64,
    defaults: &crate::health::settings::Defaults,
) -> Result<Vec<VirtualService>, ConfigError> {
    read_services(file, max_bytes, defaults).map(|(_, services)| services)
}

/// Reads and checks a services file; also returns the text read, which
/// a standalone member hands to `run` as already applied (it is not
/// parsed a second time, with the first sync running, to find that).
pub fn read_services(
    file: &Path,
    max_bytes: u64,
    defaults: &crate::health::settings::Defaults,
) -> Result<(String, Vec<VirtualService>), ConfigError> {
    let len = std::fs::metadata(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot read: {e}")))?
        .len();
    check_size(file, len, max_bytes)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot read: {e}")))?;
    let services = parse_services(&text, file, defaults)?;
    Ok((text, services))
}

/// Whether a polled change removes so much that it waits for SIGHUP:
/// every service, or more than half of ten or more. (An empty or
/// truncated file is more often an accident than an intent.)
fn removes_most(current: usize, removed: usize, left: usize) -> bool {
    removed > 0 && (left == 0 || (current >= 10 && removed * 2 > current))
}

/// Parses and checks the text of a services file; `file` is only for
/// messages; `defaults` fill what a health check leaves out. Services come
/// back in file order, each valid for the model.
pub fn parse_services(
    text: &str,
    file: &Path,
    defaults: &crate::health::settings::Defaults,
) -> Result<Vec<VirtualService>, ConfigError> {
    let raw: RawFile = parse_toml(text, file).map_err(|mut e| {
        e.service = service_name_of(text, &e.field);
        e
    })?;
    let mut services = Vec::with_capacity(raw.service.len());
    let mut by_key = HashMap::new();
    let mut by_name = HashMap::new();
    let mut by_mark = HashMap::new();
    for (i, raw) in raw.service.into_iter().enumerate() {
        let at = format!("service[{i}]");
        let name = raw.name.clone();
        let err = |field: &str, message: String| ConfigError {
            file: file.to_owned(),
            field: format!("{at}.{field}"),
            service: Some(name.clone()),
            message,
        };
        let service = check_service(raw, defaults, &err)?;
        if let Some(first) = by_name.insert(service.name.clone(), i) {
            return Err(err("name", format!("service[{first}] has the same name")));
        }
        if let Some(first) = by_key.insert(service.key, i) {
            return Err(err(
                "vip",
                format!(
                    "duplicate service: service[{first}] already serves {}",
                    service.key
                ),
            ));
        }
        if let Some(mark) = service.fwmark
            && let Some(first) = by_mark.insert((service.key.vip.is_ipv6(), mark), i)
        {
            return Err(err(
                "fwmark",
                format!(
                    "fwmark {mark} is used by service[{first}] already (one service per mark and address family)"
                ),
            ));
        }
        services.push(service);
    }
    Ok(services)
}

fn port(
    value: i64,
    field: &str,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<u16, ConfigError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("{value} is not a port (1-65535)")))
}

fn address(
    text: &str,
    field: &str,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<IpAddr, ConfigError> {
    text.parse()
        .map_err(|_| err(field, format!("{text:?} is not an IPv4 or IPv6 address")))
}

fn check_service(
    raw: RawService,
    defaults: &crate::health::settings::Defaults,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<VirtualService, ConfigError> {
    if raw.name.trim().is_empty() {
        return Err(err("name", "must not be empty".into()));
    }
    let vip = address(&raw.vip, "vip", err)?;
    let service_port = port(raw.port, "port", err)?;
    let protocol: Protocol = raw
        .protocol
        .parse()
        .map_err(|e| err("protocol", format!("{e}")))?;
    let scheduler: Scheduler = raw
        .scheduler
        .parse()
        .map_err(|e| err("scheduler", format!("{e}")))?;
    let forwarding: Forwarding = raw
        .forwarding
        .parse()
        .map_err(|e| err("forwarding", format!("{e}")))?;
    let persistence_timeout = match u32::try_from(raw.persistence_timeout) {
        Ok(0) => None,
        Ok(t) if t <= crate::model::MAX_PERSISTENCE_TIMEOUT => Some(t),
        _ => {
            return Err(err(
                "persistence_timeout",
                format!(
                    "{} is out of range 0-{} seconds (0 turns persistence off)",
                    raw.persistence_timeout,
                    crate::model::MAX_PERSISTENCE_TIMEOUT
                ),
            ));
        }
    };
    let fwmark = match u32::try_from(raw.fwmark) {
        Ok(0) => None,
        Ok(m) => Some(m),
        Err(_) => {
            return Err(err(
                "fwmark",
                format!(
                    "{} is out of range 0-{} (0: no firewall mark)",
                    raw.fwmark,
                    u32::MAX
                ),
            ));
        }
    };
    let mut allowed_sources = Vec::with_capacity(raw.allowed_sources.len());
    for (j, text) in raw.allowed_sources.iter().enumerate() {
        let field = format!("allowed_sources[{j}]");
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                err(
                    &field,
                    format!("{text:?} is not a network like \"10.0.0.0/8\" or an address"),
                )
            })?;
        if net.trunc() != net {
            return Err(err(
                &field,
                format!("{text:?} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        allowed_sources.push(net);
    }
    let (bgp_communities, bgp_large_communities) = crate::announce::bgp::codec::split_communities(
        raw.bgp_communities.iter().map(String::as_str),
    )
    .map_err(|(j, bad)| {
        err(
            &format!("bgp_communities[{j}]"),
            format!(
                "{bad:?} is not {}",
                crate::announce::bgp::codec::ANY_COMMUNITY_FORMS
            ),
        )
    })?;
    let mut backends = Vec::with_capacity(raw.backend.len());
    for (j, b) in raw.backend.into_iter().enumerate() {
        let at = format!("backend[{j}]");
        let address = address(&b.address, &format!("{at}.address"), err)?;
        let port = match b.port {
            Some(p) => port(p, &format!("{at}.port"), err)?,
            None => service_port,
        };
        let weight = u32::try_from(b.weight)
            .ok()
            .filter(|w| *w <= crate::model::MAX_WEIGHT)
            .ok_or_else(|| {
                err(
                    &format!("{at}.weight"),
                    format!(
                        "{} is out of range 0-{}",
                        b.weight,
                        crate::model::MAX_WEIGHT
                    ),
                )
            })?;
        let state: BackendState = b
            .state
            .parse()
            .map_err(|e| err(&format!("{at}.state"), format!("{e}")))?;
        backends.push(Backend {
            address,
            port,
            weight,
            state,
        });
    }
    let health = raw
        .health_check
        .map(|h| crate::health::settings::check(h, defaults, err).map(Box::new))
        .transpose()?;
    let positions: Vec<(IpAddr, u16)> = backends.iter().map(Backend::endpoint).collect();
    let service = VirtualService {
        key: crate::model::ServiceKey {
            vip,
            port: service_port,
            protocol,
        },
        name: raw.name,
        scheduler,
        persistence_timeout,
        fwmark,
        forwarding,
        allowed_sources,
        backends,
        bgp_communities,
        bgp_large_communities,
        health,
    };
    // The model's own rules (address families, duplicates) come last; map
    // their error back to the field in the file.
    service.normalize().map_err(|e| {
        let backend_field = |text: &str| {
            positions
                .iter()
                .position(|(a, p)| crate::model::SocketText(*a, *p).to_string() == text)
                .map(|j| format!("backend[{j}]"))
                .unwrap_or_else(|| "backend".into())
        };
        let field = match &e {
            InvalidService::BadVip { .. } => "vip".to_owned(),
            InvalidService::MixedFamily { backend, .. } => {
                format!("{}.address", backend_field(backend))
            }
            InvalidService::BadBackendAddress { backend, .. } => {
                format!("{}.address", backend_field(backend))
            }
            InvalidService::DuplicateBackend { backend, .. } => {
                // The second occurrence is the offending one.
                let j = positions
                    .iter()
                    .enumerate()
                    .filter(|(_, (a, p))| crate::model::SocketText(*a, *p).to_string() == *backend)
                    .map(|(j, _)| j)
                    .nth(1)
                    .unwrap_or(0);
                format!("backend[{j}]")
            }
            _ => String::new(),
        };
        err(&field, e.to_string())
    })
}

/// For a serde error at `service[3].…`, the name of service 3 if the text
/// has one, so the message names the service an operator knows.
fn service_name_of(text: &str, field: &str) -> Option<String> {
    let index: usize = field
        .strip_prefix("service[")?
        .split(']')
        .next()?
        .parse()
        .ok()?;
    let value: toml::Table = toml::from_str(text).ok()?;
    value
        .get("service")?
        .as_array()?
        .get(index)?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// Keeps the table equal to the services file until `shutdown`.
///
/// The file is checked every `check_interval` (its content, not its time
/// stamp, so an editor's rename-over counts as a change and a `touch` does
/// not) and on every SIGHUP (`hangups` changes), which reloads even an
/// unchanged file. A change a check finds is applied once the content has
/// stayed the same for `settle` (a file written in place is not applied
/// half-written), and one that would remove every service, or most of
/// them, only on SIGHUP (with a warning and the table kept meanwhile).
/// `applied` is the text already in the table (a standalone member's
/// start), if any: the first check compares with it instead of applying.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    applied: Option<String>,
    config: FileSourceConfig,
    defaults: crate::health::settings::Defaults,
    mut hangups: watch::Receiver<u64>,
    proposer: Proposer,
    states: watch::Receiver<Arc<State>>,
    status: watch::Sender<SourceStatus>,
    shutdown: CancellationToken,
) {
    if applied.is_some() {
        status.send_modify(|s| s.last_loaded_unix_ms = unix_ms(SystemTime::now()));
    }
    let FileSourceConfig {
        path,
        check_interval,
        settle,
        max_bytes,
    } = config;
    let mut last_text: Option<String> = applied;
    // A changed content seen by a check, and since when.
    let mut settling: Option<(String, std::time::Instant)> = None;
    let mut ticker = tokio::time::interval(check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => false,
            Ok(()) = hangups.changed() => {
                info!(file = %path.display(), "SIGHUP: reloading the services file");
                true
            }
        };
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => check_size(&path, m.len(), max_bytes),
            Err(e) => Err(ConfigError::new(&path, "", format!("cannot read: {e}"))),
        };
        if let Err(e) = size {
            report_failure(&status, &e, &mut last_text, None);
            continue;
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) => {
                let e = ConfigError::new(&path, "", format!("cannot read: {e}"));
                report_failure(&status, &e, &mut last_text, None);
                continue;
            }
        };
        if !forced && last_text.as_deref() == Some(text.as_str()) {
            settling = None;
            continue;
        }
        // The first read (a new leader, or a start with nothing applied)
        // applies at once; a later change, and a change made since the
        // text a standalone member started from, once it has settled.
        if !forced && last_text.is_some() {
            match &settling {
                Some((seen, since)) if *seen == text && since.elapsed() >= settle => {}
                Some((seen, _)) if *seen == text => continue,
                _ => {
                    settling = Some((text, std::time::Instant::now()));
                    continue;
                }
            }
        }
        settling = None;
        match parse_services(&text, &path, &defaults) {
            Ok(services) => {
                let declared = services.len();
                // The parsed list goes into the comparison and is freed
                // there, before the proposal: not beside the dataplane's
                // work on the change once it is committed.
                let commands = commands_towards(&states.borrow(), services);
                let count = commands.len();
                let removed = commands
                    .iter()
                    .filter(|c| matches!(c, crate::model::Command::DeleteService(_)))
                    .count();
                let current = states.borrow().len();
                if !forced && removes_most(current, removed, declared) {
                    let e = ConfigError::new(
                        &path,
                        "",
                        format!(
                            "this version removes {removed} of the {current} services{}; not applied until SIGHUP confirms it (kill -HUP the member); the running table is kept",
                            if declared == 0 {
                                " (it declares none)"
                            } else {
                                ""
                            }
                        ),
                    );
                    report_failure(&status, &e, &mut last_text, Some(text));
                    continue;
                }
                // The previous text too (the file's size, 16 MiB at most).
                drop(last_text.take());
                match proposer.propose(commands).await {
                    Ok(_) => {
                        crate::metrics::METRICS
                            .source_loads
                            .with_label_values(&["ok"])
                            .inc();
                        if count > 0 {
                            info!(file = %path.display(), commands = count, services = declared, "services file loaded");
                        }
                        last_text = Some(text);
                        status.send_modify(|s| {
                            s.last_loaded_unix_ms = unix_ms(SystemTime::now());
                            s.last_error.clear();
                        });
                    }
                    Err(e) => {
                        // Not committed: try again at the next check.
                        error!(file = %path.display(), error = %e, "could not commit the services file's changes; retrying");
                        last_text = None;
                        status.send_modify(|s| s.last_error = e.to_string());
                    }
                }
            }
            Err(e) => report_failure(&status, &e, &mut last_text, Some(text)),
        }
    }
}

fn report_failure(
    status: &watch::Sender<SourceStatus>,
    e: &ConfigError,
    last_text: &mut Option<String>,
    text: Option<String>,
) {
    let message = e.to_string();
    crate::metrics::METRICS
        .source_loads
        .with_label_values(&["error"])
        .inc();
    // Log a failure once, not at every check while it lasts.
    if status.borrow().last_error != message {
        error!(error = %message, "services file rejected; the running table is kept");
    }
    if text.is_some() {
        *last_text = text;
    }
    status.send_modify(|s| s.last_error = message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_FILE_BYTES;
    use std::time::Duration;

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("services.toml");
        let file = std::fs::File::create(&path).expect("create");
        // Sparse: 17 MiB that take no disk, and would take 600 MB to parse.
        file.set_len(17 << 20).expect("grow");
        let text = load_services(&path, DEFAULT_MAX_FILE_BYTES, &Default::default())
            .expect_err("too big")
            .to_string();
        assert!(
            text.contains("services.toml")
                && text.contains("16 MiB")
                && text.contains("max_size_mib"),
            "{text}"
        );
        // A raised limit reads it (and finds no services in its zeros).
        let raised = load_services(&path, 32 << 20, &Default::default())
            .expect_err("not TOML")
            .to_string();
        assert!(!raised.contains("at most"), "{raised}");
    }

    #[tokio::test]
    async fn the_text_applied_at_start_is_not_applied_again_and_a_later_edit_is() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("services.toml");
        let one = "[[service]]\nname = \"web\"\nvip = \"192.0.2.1\"\nport = 80\n";
        std::fs::write(&path, one).expect("write");
        let shutdown = CancellationToken::new();
        // The table is not the file on purpose: had the source parsed and
        // applied the start's text again, "web" would appear in it.
        let (proposer, states, log) =
            crate::replication::standalone(State::default(), shutdown.clone());
        tokio::spawn(log);
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let (_hangup, hangups) = watch::channel(0u64);
        let source = tokio::spawn(run(
            Some(one.to_owned()),
            FileSourceConfig {
                path: path.clone(),
                check_interval: Duration::from_millis(10),
                settle: Duration::from_millis(30),
                max_bytes: DEFAULT_MAX_FILE_BYTES,
            },
            Default::default(),
            hangups,
            proposer,
            states.clone(),
            status_tx,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            states.borrow().len(),
            0,
            "the applied text was applied again"
        );
        assert!(
            status.borrow().last_loaded_unix_ms > 0,
            "{:?}",
            status.borrow()
        );
        let two = format!("{one}[[service]]\nname = \"api\"\nvip = \"192.0.2.2\"\nport = 443\n");
        std::fs::write(&path, two).expect("write");
        let mut states = states;
        tokio::time::timeout(Duration::from_secs(10), states.wait_for(|s| s.len() == 2))
            .await
            .expect("the edit applied in time")
            .expect("the log runs");
        shutdown.cancel();
        source.await.expect("the source ends");
    }

    #[test]
    fn bgp_communities_of_a_service() {
        let file = Path::new("/etc/lb-node/services.toml");
        let head = "[[service]]\nname = \"web\"\nvip = \"192.0.2.1\"\nport = 80\n";
        let s = parse_services(
            &format!("{head}bgp_communities = [\"65001:100\", \"65001:1:2\", \"no-advertise\", \"65001:100\"]\n"),
            file,
            &Default::default(),
        )
        .expect("valid");
        assert_eq!(s[0].bgp_communities, vec![(65001 << 16) | 100, 0xFFFF_FF02]);
        assert_eq!(s[0].bgp_large_communities, vec![(65001, 1, 2)]);
        let e = parse_services(
            &format!("{head}bgp_communities = [\"1:2\", \"1:2:x\"]\n"),
            file,
            &Default::default(),
        )
        .expect_err("bad")
        .to_string();
        assert!(
            e.contains("bgp_communities[1]") && e.contains("\"1:2:x\" is not a community"),
            "{e}"
        );
    }

    #[test]
    fn a_check_takes_what_it_leaves_out_from_the_member_defaults() {
        let file = Path::new("/etc/lb-node/services.toml");
        let text = "[[service]]\nname = \"web\"\nvip = \"192.0.2.1\"\nport = 80\n[service.health_check]\nkind = \"tcp\"\nrise = 3\n";
        let defaults = crate::health::settings::Defaults {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 1,
            fall: 4,
            on_down: crate::model::OnDown::Remove,
        };
        let s = parse_services(text, file, &defaults).expect("valid");
        let check = s[0].health.as_deref().expect("a check");
        assert_eq!(
            (
                check.interval,
                check.timeout,
                check.rise,
                check.fall,
                check.on_down
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(2),
                3,
                4,
                crate::model::OnDown::Remove
            )
        );
        let s = parse_services(text, file, &Default::default()).expect("valid");
        let check = s[0].health.as_deref().expect("a check");
        assert_eq!((check.interval, check.fall), (Duration::from_secs(1), 3));
    }

    #[test]
    fn removing_every_service_or_most_of_many_waits() {
        assert!(removes_most(3, 3, 0), "emptied");
        assert!(!removes_most(3, 2, 1), "a small table edited");
        assert!(removes_most(20, 11, 9), "most of many");
        assert!(!removes_most(20, 10, 10), "half");
        assert!(!removes_most(0, 0, 0), "nothing to remove");
    }
}
