//! How answers read: tables for people, JSON with typed fields for
//! scripts, times local and RFC 3339.

use std::net::IpAddr;

use proto::admin::v1 as pb;
use proto::state::v1 as state;
use serde_json::json;

use crate::cli::Output;

/// "1 route", "2 routes": a count and its noun, in the number it takes.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub(crate) fn when(unix_ms: i64) -> String {
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
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    clock(unix_ms).replacen(' ', "T", 1)
}

/// A Unix millisecond time as UTC wall-clock time, to the millisecond
/// ("2026-12-05 01:10:12.345Z").
pub(crate) fn clock(unix_ms: i64) -> String {
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

pub(crate) fn print_status(s: &pb::GetStatusResponse, output: Output) {
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
                    "learners": c.learners,
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
                        } else if c.learners.contains(&m.id) {
                            "learner"
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

pub(crate) fn print_services(r: &pb::ListServicesResponse, output: Output, detailed: bool) {
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
