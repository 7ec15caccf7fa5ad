//! Three members watching the fake API server (`fake_api`): the helpers the
//! Kubernetes tests share, and the drills of the Kubernetes source
//! (`apiserver-outage`, `history-compacted`, `flapping-backend`).
//!
//! The fake server speaks the list/watch protocol kube-rs uses (checked
//! against kubectl in `tests/fake_api.rs`); the members run the real
//! kube-rs client. Services are `shop/svc-i` with clusterIP 10.96.1.(i+1)
//! port 80, each with one EndpointSlice `svc-i-a` of hosts 10.1.5.h:8080.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::admin::v1 as pb;
use serde_json::{Value, json};

use crate::fake_api::{ClientStats, FakeApi, Kind};
use crate::report::{Report, ms};
use crate::{ClusterLayout, Member, cluster_status, eventually};

/// The drills of this module, by name.
pub const KUBE_DRILLS: [&str; 3] = ["apiserver-outage", "history-compacted", "flapping-backend"];

/// name -> (vip:port, sorted "address:port state").
pub type Table = BTreeMap<String, (String, Vec<String>)>;

/// Service shop/`name` of type ClusterIP.
pub fn service(name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]
        }
    })
}

/// EndpointSlice shop/`name` of `service`, ready hosts 10.1.(len).h:8080.
pub fn slice(name: &str, service: &str, hosts: &[u8]) -> Value {
    let endpoints: Vec<Value> = hosts
        .iter()
        .map(|h| json!({"addresses": [format!("10.1.{}.{h}", service.len())], "conditions": {"ready": true}}))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn ip_of(bytes: &[u8]) -> std::net::IpAddr {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).into(),
        _ => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).into(),
    }
}

/// The table `member` holds, through its admin API.
pub async fn table(member: &Member) -> anyhow::Result<Table> {
    let services = member
        .client()
        .await?
        .list_services(pb::ListServicesRequest::default())
        .await?
        .into_inner()
        .services;
    let mut out = Table::new();
    for s in services {
        let key = s.key.unwrap_or_default();
        let mut backends: Vec<String> = s
            .backends
            .iter()
            .map(|b| format!("{}:{} {}", ip_of(&b.address), b.port, b.state))
            .collect();
        backends.sort();
        out.insert(
            s.name,
            (format!("{}:{}", ip_of(&key.vip), key.port), backends),
        );
    }
    Ok(out)
}

/// Waits until every member holds `expected`; on a timeout, prints the
/// differences.
pub async fn converged(members: &BTreeMap<u64, Member>, expected: &Table) -> anyhow::Result<()> {
    let result = eventually(
        "every member's table matches",
        Duration::from_secs(20),
        || async {
            for m in members.values() {
                if table(m).await? != *expected {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await;
    if result.is_err() {
        for (id, m) in members {
            let t = table(m).await.unwrap_or_default();
            for (name, v) in expected {
                if t.get(name) != Some(v) {
                    eprintln!("member {id}: {name}: expected {v:?}, has {:?}", t.get(name));
                }
            }
            for name in t.keys().filter(|n| !expected.contains_key(*n)) {
                eprintln!("member {id}: unexpected {name}: {:?}", t[name]);
            }
        }
    }
    result
}

/// The table that services `svc-i` with slices of `hosts[i]` hosts mean.
pub fn expected(hosts: &[Vec<u8>]) -> Table {
    let mut t = Table::new();
    for (i, h) in hosts.iter().enumerate() {
        let name = format!("svc-{i}");
        let mut backends: Vec<String> = h
            .iter()
            .map(|x| format!("10.1.{}.{x}:8080 1", name.len()))
            .collect();
        backends.sort();
        t.insert(
            format!("shop/{name}:http"),
            (format!("10.96.1.{}:80", i + 1), backends),
        );
    }
    t
}

/// Runs kubectl (as an operator does) with `kubeconfig`; its stdout, or
/// an error with its stderr.
pub fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run kubectl (the test command installs it): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The fake API server and three members watching it.
#[derive(Debug)]
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub api: FakeApi,
    pub layout: ClusterLayout,
    pub members: BTreeMap<u64, Member>,
}

/// Starts the fake API server with `n_services` services of two hosts
/// each, and three members; returns the hosts per service.
pub async fn start(n_services: usize) -> anyhow::Result<(Setup, Vec<Vec<u8>>)> {
    let api = FakeApi::start(Duration::from_secs(1)).await?;
    let mut hosts = Vec::new();
    for i in 0..n_services {
        let name = format!("svc-{i}");
        api.apply(
            Kind::Services,
            service(&name, &format!("10.96.1.{}", i + 1), 80),
        )?;
        let h: Vec<u8> = (1..=2).collect();
        api.apply(Kind::EndpointSlices, slice(&format!("{name}-a"), &name, &h))?;
        hosts.push(h);
    }
    let dir = tempfile::tempdir()?;
    api.write_kubeconfig(dir.path(), "kube")?;
    let layout = ClusterLayout::write_with_source(
        dir.path(),
        3,
        "[source.kubernetes]\nkubeconfig = \"kube.kubeconfig\"\naddress_pools = [\"192.0.2.0/28\"]\n",
        "kube-cluster",
    )?;
    let members = layout.start_all()?;
    Ok((
        Setup {
            dir,
            api,
            layout,
            members,
        },
        hosts,
    ))
}

/// The member some live member names leader.
pub async fn leader(members: &BTreeMap<u64, Member>) -> anyhow::Result<u64> {
    eventually("a leader", Duration::from_secs(20), || async {
        for m in members.values() {
            let s = cluster_status(m).await?;
            if s.leader != 0 && members.contains_key(&s.leader) {
                return Ok(Some(s.leader));
            }
        }
        Ok(None)
    })
    .await
}

/// The fake server's counts for member `id`.
pub fn stats_of(api: &FakeApi, id: u64) -> ClientStats {
    api.stats()
        .into_iter()
        .find(|(agent, _)| agent.ends_with(&format!("(member {id})")))
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// The table's revision as `m` holds it (one per committed change).
pub async fn revision(m: &Member) -> anyhow::Result<u64> {
    Ok(m.client()
        .await?
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner()
        .revision)
}

/// Since when (unix ms) `m` says its source is disconnected; 0 when it is
/// connected.
async fn disconnected_since(m: &Member) -> anyhow::Result<u64> {
    Ok(m.client()
        .await?
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner()
        .source
        .map_or(0, |s| {
            u64::try_from(s.disconnected_since_unix_ms).unwrap_or(0)
        }))
}

/// Kills member `id` (SIGKILL) and waits for it to be gone.
fn kill(setup: &mut Setup, id: u64) -> anyhow::Result<()> {
    let mut m = setup.members.remove(&id).context("no such member")?;
    m.signal("KILL")?;
    m.wait_exit(Duration::from_secs(5))?;
    Ok(())
}

/// Runs one Kubernetes drill; `outage` is how long `apiserver-outage`
/// keeps the API server away.
pub async fn run(name: &str, outage: Duration) -> anyhow::Result<Report> {
    anyhow::ensure!(
        KUBE_DRILLS.contains(&name),
        "unknown drill {name:?}; drills: {}",
        KUBE_DRILLS.join(", ")
    );
    let (mut setup, mut hosts) = start(10).await?;
    let mut report = Report {
        drill: name.into(),
        tier: "loopback",
        ..Report::default()
    };
    converged(&setup.members, &expected(&hosts)).await?;
    let old = leader(&setup.members).await?;
    let follower = *setup
        .members
        .keys()
        .find(|id| **id != old)
        .context("a follower")?;
    let before = revision(&setup.members[&follower]).await?;
    setup.api.reset_stats();
    let t0 = Instant::now();
    // API server changes made during the drill.
    let mut changes = 0u64;
    match name {
        "apiserver-outage" => {
            // The API server refuses every connection; halfway through,
            // the leader dies too. The table must keep serving (fail
            // static) on every member, and the changes made meanwhile
            // arrive once the server is back.
            setup.api.set_refusing(true).await;
            hosts[2] = vec![1, 2, 3];
            setup
                .api
                .apply(Kind::EndpointSlices, slice("svc-2-a", "svc-2", &hosts[2]))?;
            changes += 1;
            let since = eventually(
                "the leader reports the outage",
                Duration::from_secs(15),
                || async {
                    let since = disconnected_since(&setup.members[&old]).await?;
                    Ok((since > 0).then_some(since))
                },
            )
            .await;
            if let Err(e) = since {
                report.failures.push(format!("outage not reported: {e:#}"));
            }
            tokio::time::sleep(outage / 2).await;
            kill(&mut setup, old)?;
            let t1 = Instant::now();
            let new = leader(&setup.members).await?;
            report.time_to_new_leader_ms = Some(ms(t1.elapsed()));
            tokio::time::sleep(outage.saturating_sub(t0.elapsed())).await;
            let mut served = expected(&hosts);
            served.insert(
                "shop/svc-2:http".into(),
                (
                    "10.96.1.3:80".into(),
                    vec!["10.1.5.1:8080 1".into(), "10.1.5.2:8080 1".into()],
                ),
            );
            for (id, m) in &setup.members {
                if table(m).await? != served {
                    report.failures.push(format!(
                        "member {id} lost part of its table during the outage"
                    ));
                }
            }
            if disconnected_since(&setup.members[&new]).await? == 0 {
                report
                    .failures
                    .push(format!("the new leader {new} does not report the outage"));
            }
            setup.api.set_refusing(false).await;
            let t2 = Instant::now();
            if converged(&setup.members, &expected(&hosts)).await.is_ok() {
                report.time_to_converged_ms = Some(ms(t2.elapsed()));
            }
        }
        "history-compacted" => {
            // The leader dies; while nobody watches, a change is made and
            // the history before it compacted away: the new leader's
            // cursor is too old (410 Gone). It must relist once per kind
            // and propose only the real difference.
            kill(&mut setup, old)?;
            hosts[3] = vec![5];
            setup
                .api
                .apply(Kind::EndpointSlices, slice("svc-3-a", "svc-3", &hosts[3]))?;
            changes += 1;
            setup.api.compact();
            let new = leader(&setup.members).await?;
            report.time_to_new_leader_ms = Some(ms(t0.elapsed()));
            if converged(&setup.members, &expected(&hosts)).await.is_ok() {
                report.time_to_converged_ms = Some(ms(t0.elapsed()));
            }
            // Anything needless would be proposed by now too.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let s = stats_of(&setup.api, new);
            if s.count("list services") != 1 || s.count("list endpointslices") != 1 {
                report
                    .failures
                    .push(format!("expected one relist per kind, saw {s:?}"));
            }
            let after = revision(&setup.members[&new]).await?;
            if after != before + 1 {
                report.failures.push(format!(
                    "the relist proposed {} commands for one real change",
                    after - before
                ));
            }
        }
        "flapping-backend" => {
            // One backend of svc-0 leaves and rejoins its slice every 50 ms
            // for 5 s while the other services change at 10 per second.
            // Every member must end with the final table, no change lost,
            // and no more commands than API server changes.
            for step in 0..100u32 {
                hosts[0] = if step % 2 == 0 { vec![1] } else { vec![1, 2] };
                setup
                    .api
                    .apply(Kind::EndpointSlices, slice("svc-0-a", "svc-0", &hosts[0]))?;
                changes += 1;
                if step % 2 == 0 {
                    let i = 1 + (step as usize / 2) % 9;
                    hosts[i] = vec![1 + (step % 5) as u8, 10];
                    setup.api.apply(
                        Kind::EndpointSlices,
                        slice(&format!("svc-{i}-a"), &format!("svc-{i}"), &hosts[i]),
                    )?;
                    changes += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let t1 = Instant::now();
            if converged(&setup.members, &expected(&hosts)).await.is_ok() {
                report.time_to_converged_ms = Some(ms(t1.elapsed()));
            }
            let after = revision(&setup.members[&follower]).await?;
            if after - before > changes {
                report.failures.push(format!(
                    "{} commands for {changes} API server changes",
                    after - before
                ));
            }
        }
        _ => unreachable!("checked above"),
    }
    // What the API server holds, on every member: each service a member
    // lacks or holds differently counts as lost.
    let want = expected(&hosts);
    let mut lost = 0u64;
    for (id, m) in &setup.members {
        let t = table(m).await?;
        let wrong: Vec<&String> = want
            .keys()
            .filter(|k| t.get(*k) != want.get(*k))
            .chain(t.keys().filter(|k| !want.contains_key(*k)))
            .collect();
        if !wrong.is_empty() {
            report.failures.push(format!(
                "member {id} differs from the API server on {wrong:?}"
            ));
        }
        lost += wrong.len() as u64;
    }
    report.commands_lost = Some(lost);
    report.commands_acknowledged = changes;
    report.passed = report.failures.is_empty();
    Ok(report)
}
