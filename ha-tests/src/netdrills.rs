//! Drills with real packets: the L2 lab's network namespaces (three members
//! and a client on one bridge, docs in `l2lab.rs`), real ARP, and client
//! traffic to a VIP.
//!
//! Each member namespace runs a small HTTP server on port 80; the VIP is
//! local (on `lo`) only on the member that announces it, so a request to
//! the VIP is answered by the member the client's ARP cache points to, or
//! by nobody. The client opens a new TCP connection every 20 ms to the VIP
//! of the member the fault hits and records each success and failure; a
//! writer sets a backend weight through the admin API 20 times a second.
//! The memory dataplane serves here (this kernel has no IPVS): what is
//! measured is how long the network takes to find the VIP's new home, not
//! IPVS forwarding (the kernel lab tests that, docs/ipvs.md).
//!
//! The drill's own code runs on a thread that entered the client's network
//! namespace, and so do the threads of its runtime, so every socket it
//! opens (traffic, admin calls) starts there.

use std::process::Child;
use std::time::Duration;

use anyhow::Context as _;
use proto::admin::v1 as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::drills::{Report, Writer, override_weight};
use crate::l2lab::{Lab, VIPS, split_brain, unix_now};

/// The drills this tier runs, by name.
pub const NET_DRILLS: [&str; 4] = [
    "leader-crash",
    "owner-crash",
    "leader-isolated",
    "minority-partition",
];

/// The writer's service and backend (from the lab's services file).
const SERVICE: &str = "web-1";
const BACKEND: &str = "10.77.0.200:8080";

/// Requests the client sends per second.
const REQUESTS_PER_SECOND: u64 = 50;

/// Moves the calling thread into network namespace `ns` (by its name
/// under /run/netns).
fn enter_netns(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {path}"))?;
    Ok(())
}

/// Runs one drill by name in a fresh lab.
pub fn run(name: &str) -> anyhow::Result<Report> {
    anyhow::ensure!(
        NET_DRILLS.contains(&name),
        "unknown network drill {name:?}; drills: {}",
        NET_DRILLS.join(", ")
    );
    let tag = match name {
        "leader-crash" => "dl",
        "owner-crash" => "do",
        "leader-isolated" => "di",
        _ => "dp",
    };
    let mut lab = Lab::new(tag)?;
    lab.admin_on_lan = true;
    lab.start_arp_watch()?;
    lab.start_members()?;
    let lab_http = crate::binary("lab-http")?;
    let lab_http = lab_http.to_str().context("lab-http path")?;
    let mut servers: Vec<Child> = Vec::new();
    for id in 1..=3u64 {
        servers.push(lab.spawn(
            &format!("m{id}"),
            &[lab_http, "serve", "0.0.0.0:80", &format!("m{id}")],
        )?);
    }
    for vip in VIPS {
        lab.wait_garp(vip, 0.0, None, Duration::from_secs(30))?;
    }
    let client_ns = lab.ns("c");
    let result = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Report> {
            enter_netns(&client_ns)?;
            // Worker threads are created by this thread, so they start in
            // the client namespace too. The traffic and the writer run on
            // them, so the drill's own blocking waits (for an ARP frame, a
            // process to exit) never hold them up.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(drill(&mut lab, name))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the drill thread panicked"))?
    });
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    result
}

/// One request: a new connection to `vip`:80, "GET /", the answer's body
/// (the answering member's name). Fails after 300 ms.
async fn request(vip: std::net::Ipv4Addr) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((vip, 80)).await.ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        // The server waits for the client to close first (lab-http), so
        // read until the one-line body is complete.
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((_, body)) = text.split_once("\r\n\r\n")
                && body.ends_with('\n')
            {
                return Some(body.trim().to_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(300), attempt)
        .await
        .ok()
        .flatten()
}

/// Client traffic to one VIP: (unix time sent, answering member or None).
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(f64, Option<String>)>>,
}

impl Traffic {
    fn start(vip: std::net::Ipv4Addr) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / REQUESTS_PER_SECOND));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut pending = tokio::task::JoinSet::new();
            while !halt.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                let at = unix_now();
                pending.spawn(async move { (at, request(vip).await) });
                while let Some(Ok(done)) = pending.try_join_next() {
                    out.push(done);
                }
            }
            while let Some(Ok(done)) = pending.join_next().await {
                out.push(done);
            }
            out.sort_by(|a, b| a.0.total_cmp(&b.0));
            out
        });
        Traffic { stop, task }
    }

    async fn finish(self) -> Vec<(f64, Option<String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

/// The longest stretch without an answer: from the last answered request
/// before a failure to the first answered one after it (ms), and how many
/// failed.
pub fn disruption(records: &[(f64, Option<String>)]) -> (u64, u64) {
    let failed = records.iter().filter(|(_, r)| r.is_none()).count() as u64;
    let mut longest = 0.0f64;
    let mut last_ok: Option<f64> = None;
    let mut in_outage = false;
    for (at, answer) in records {
        match answer {
            Some(_) => {
                if in_outage && let Some(ok) = last_ok {
                    longest = longest.max(at - ok);
                }
                in_outage = false;
                last_ok = Some(*at);
            }
            None => in_outage = true,
        }
    }
    if in_outage && let (Some(ok), Some((end, _))) = (last_ok, records.last()) {
        longest = longest.max(end - ok);
    }
    ((longest * 1000.0).round() as u64, failed)
}

/// The member each live member says leads, once they agree and hold the
/// same applied index; via the admin API from the client namespace.
async fn settled(lab: &Lab, timeout: Duration) -> anyhow::Result<u64> {
    crate::eventually("an agreed leader, everyone caught up", timeout, || async {
        let mut seen = Vec::new();
        for id in lab.members.keys() {
            let s = admin(lab, *id)
                .await?
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner()
                .cluster
                .context("no cluster status")?;
            seen.push((s.leader, s.applied_index));
        }
        let (leader, applied) = seen[0];
        let ok = leader != 0
            && lab.members.contains_key(&leader)
            && seen.iter().all(|s| *s == (leader, applied));
        Ok(ok.then_some(leader))
    })
    .await
}

async fn admin(
    lab: &Lab,
    id: u64,
) -> anyhow::Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Channel::from_shared(lab.admin_endpoint(id))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(pb::admin_client::AdminClient::new(channel))
}

/// Cuts member `id` off from the other members (its packets to them are
/// dropped by blackhole routes in its namespace, so no connection between
/// them works either way); the client still reaches it.
fn isolate(lab: &Lab, id: u64, cut: bool) -> anyhow::Result<()> {
    for other in (1..=3u64).filter(|o| *o != id) {
        let net = format!("10.77.0.{other}/32");
        let verb = if cut { "add" } else { "del" };
        lab.exec(&format!("m{id}"), &["ip", "route", verb, "blackhole", &net])?;
    }
    Ok(())
}

async fn drill(lab: &mut Lab, name: &str) -> anyhow::Result<Report> {
    let mut report = Report {
        drill: name.into(),
        tier: "netns",
        ..Report::default()
    };
    let leader = settled(lab, Duration::from_secs(30)).await?;
    // Who answers for each VIP now: one VIP per member once balanced.
    let owners: Vec<(&str, u64)> = crate::eventually(
        "each member answering ARP for one VIP",
        Duration::from_secs(10),
        || async {
            let now = unix_now();
            let owners: Vec<(&str, u64)> = VIPS
                .iter()
                .filter_map(|vip| {
                    lab.answering(vip)
                        .filter(|(at, _)| now - at < 0.3)
                        .map(|(_, m)| (*vip, m))
                })
                .collect();
            let members: std::collections::BTreeSet<u64> = owners.iter().map(|(_, m)| *m).collect();
            Ok((members.len() == 3).then_some(owners))
        },
    )
    .await?;
    let victim = match name {
        "leader-crash" | "leader-isolated" => leader,
        _ => *owners
            .iter()
            .map(|(_, m)| m)
            .find(|m| **m != leader)
            .context("a follower answering for a VIP")?,
    };
    let vip = owners
        .iter()
        .find(|(_, m)| *m == victim)
        .map(|(v, _)| *v)
        .with_context(|| format!("member {victim} answers for no VIP: {owners:?}"))?;
    let endpoints: Vec<String> = (1..=3).map(|id| lab.admin_endpoint(id)).collect();
    let writer = Writer::start(endpoints, 20, SERVICE, BACKEND);
    let traffic = Traffic::start(vip.parse()?);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = unix_now();
    let mut dead = None;
    match name {
        "leader-crash" | "owner-crash" => {
            // The machine is lost, not only the process: lb-node is killed
            // and the machine's link goes down. (Killing only lb-node
            // leaves the VIP local and the kernel serving it: the clients
            // whose ARP caches point there go on being served, so the
            // drill would see no disruption at all.)
            let member = lab.members.remove(&victim).context("victim")?;
            member.signal("KILL")?;
            lab.exec(
                &format!("m{victim}"),
                &["ip", "link", "set", "eth0", "down"],
            )?;
            dead = Some(member);
        }
        _ => isolate(lab, victim, true)?,
    }
    // The VIP's new home: another member's first gratuitous ARP.
    let garp = lab.wait_garp(vip, t0, Some(victim), Duration::from_secs(10));
    match garp {
        Ok((_, at)) => report.time_to_vip_moved_ms = Some(((at - t0) * 1000.0) as u64),
        Err(e) => report.failures.push(format!("{vip} did not move: {e:#}")),
    }
    if name != "owner-crash" {
        // A new leader on the majority side (or, for a minority partition,
        // the same one going on).
        let found = crate::eventually(
            "a leader on the majority side",
            Duration::from_secs(10),
            || async {
                for id in lab.members.keys().filter(|id| **id != victim) {
                    let Ok(mut c) = admin(lab, *id).await else {
                        continue;
                    };
                    let Ok(s) = c.get_status(pb::GetStatusRequest {}).await else {
                        continue;
                    };
                    let leader_now = s.into_inner().cluster.map_or(0, |c| c.leader);
                    if leader_now != 0 && leader_now != victim {
                        return Ok(Some(leader_now));
                    }
                }
                Ok(None)
            },
        )
        .await;
        match found {
            Ok(new) if name == "minority-partition" && new != leader => report.failures.push(
                format!("leader moved from {leader} to {new} when a follower was cut off"),
            ),
            Ok(_) if name != "minority-partition" => {
                report.time_to_new_leader_ms = Some(((unix_now() - t0) * 1000.0) as u64);
            }
            Ok(_) => {}
            Err(e) => report.failures.push(format!("no leader: {e:#}")),
        }
    }
    // Let the fault stand a little, then undo it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    match dead.take() {
        Some(mut member) => {
            member.wait_exit(Duration::from_secs(5))?;
            drop(member);
            lab.exec(&format!("m{victim}"), &["ip", "link", "set", "eth0", "up"])?;
            lab.restart(victim)?;
        }
        None => isolate(lab, victim, false)?,
    }
    settled(lab, Duration::from_secs(30)).await?;
    report.time_to_converged_ms = Some(((unix_now() - t0) * 1000.0) as u64);
    // Traffic goes on until every VIP is answered again and a little after,
    // so that a VIP moving back to the returning member is counted too.
    crate::eventually("every VIP answered", Duration::from_secs(10), || async {
        let now = unix_now();
        Ok(VIPS
            .iter()
            .all(|v| lab.answering(v).is_some_and(|(at, _)| now - at < 0.3))
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = traffic.finish().await;
    let (acknowledged, attempted) = writer.finish().await;
    if std::env::var_os("DRILL_TRAFFIC").is_some() {
        for (at, answer) in &records {
            eprintln!("{:+.3} {}", at - t0, answer.as_deref().unwrap_or("-"));
        }
    }
    let (outage, failed) = disruption(&records);
    report.disruption_ms = Some(outage);
    report.requests_failed = Some(failed);
    report.requests_sent = Some(records.len() as u64);
    if records.iter().all(|(_, r)| r.is_none()) {
        report
            .failures
            .push(format!("no request to {vip} was ever answered"));
    }

    let ids: Vec<u64> = lab.members.keys().copied().collect();
    let lab_ref: &Lab = lab;
    report
        .check_writes(&ids, acknowledged, attempted, |id| async move {
            override_weight(admin(lab_ref, id).await?, SERVICE, [10, 77, 0, 200], 8080).await
        })
        .await;
    // At no time did two members answer ARP for one VIP (answers closer
    // than 40 ms apart, the client asking every 50 ms).
    for v in VIPS {
        if let Some(overlap) = split_brain(&lab.replies(v), 0.04) {
            report
                .failures
                .push(format!("split brain on {v}: {overlap}"));
        }
    }
    report.passed = report.failures.is_empty();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::disruption;

    fn r(at: f64, ok: bool) -> (f64, Option<String>) {
        (at, ok.then(|| "m1".to_owned()))
    }

    #[test]
    fn the_longest_outage_spans_last_answer_to_next_answer() {
        let records = [
            r(0.0, true),
            r(0.02, true),
            r(0.04, false),
            r(0.06, false),
            r(0.08, true),
            r(0.10, false),
            r(0.12, true),
        ];
        assert_eq!(disruption(&records), (60, 3));
        assert_eq!(disruption(&[r(0.0, true), r(0.02, true)]), (0, 0));
        // An outage still open at the end counts up to the last request.
        assert_eq!(disruption(&[r(0.0, true), r(0.5, false)]), (500, 1));
    }
}
