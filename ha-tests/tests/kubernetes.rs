//! Three lb-node members and the fake API server: only the leader watches,
//! every member's table follows the Services and EndpointSlices, a new
//! leader resumes from the replicated cursor without a relist, and an API
//! server outage leaves the table serving. (A compacted history during a
//! failover is the `history-compacted` drill, `tests/drills.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ha_tests::fake_api::{FakeApi, Kind};
use ha_tests::kube::{Setup, converged, expected, leader, service, slice, start, stats_of, table};
use ha_tests::{Member, eventually};
use proto::admin::v1 as pb;
use serde_json::json;

/// The first `status.loadBalancer.ingress` address of Service shop/`name`.
fn ingress_ip(api: &FakeApi, name: &str) -> Option<String> {
    api.get(Kind::Services, "shop", name).and_then(|s| {
        s["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_owned)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_follow_the_api_server_and_only_the_leader_watches() -> anyhow::Result<()> {
    let (setup, mut hosts) = start(3).await?;
    let Setup { api, members, .. } = &setup;
    converged(members, &expected(&hosts)).await?;
    let leader = leader(members).await?;

    // Scale up, scale down, a second slice, a new service, a deletion.
    hosts[0] = vec![1, 2, 3, 4];
    api.apply(Kind::EndpointSlices, slice("svc-0-a", "svc-0", &hosts[0]))?;
    api.apply(Kind::EndpointSlices, slice("svc-1-a", "svc-1", &[2]))?;
    api.apply(Kind::EndpointSlices, slice("svc-1-b", "svc-1", &[7]))?;
    hosts[1] = vec![2, 7];
    api.apply(Kind::Services, service("svc-3", "10.96.1.4", 80))?;
    api.apply(Kind::EndpointSlices, slice("svc-3-a", "svc-3", &[9]))?;
    hosts.push(vec![9]);
    api.delete(Kind::Services, "shop", "svc-2")?;
    let mut want = expected(&hosts);
    want.remove("shop/svc-2:http");
    converged(members, &want).await?;

    // A port change replaces the virtual service.
    api.apply(Kind::Services, service("svc-3", "10.96.1.4", 8000))?;
    want.insert(
        "shop/svc-3:http".into(),
        ("10.96.1.4:8000".into(), vec!["10.1.5.9:8080 1".into()]),
    );
    converged(members, &want).await?;

    // A LoadBalancer service gets an address from the pool, served as a VIP
    // and written back to its status.
    let mut lb = service("front", "10.96.2.1", 443);
    lb["spec"]["type"] = json!("LoadBalancer");
    api.apply(Kind::Services, lb)?;
    api.apply(Kind::EndpointSlices, slice("front-a", "front", &[1]))?;
    let ingress = eventually(
        "status.loadBalancer written",
        Duration::from_secs(10),
        || async { Ok(ingress_ip(api, "front")) },
    )
    .await?;
    assert_eq!(ingress, "192.0.2.1", "the first address of the pool");
    // Both the clusterIP and the LoadBalancer address are served (two
    // virtual services of one name), on every member.
    for m in members.values() {
        eventually(
            "front served on both VIPs",
            Duration::from_secs(10),
            || async {
                let listed = m
                    .client()
                    .await?
                    .list_services(pb::ListServicesRequest::default())
                    .await?
                    .into_inner()
                    .services;
                let vips: BTreeSet<Vec<u8>> = listed
                    .iter()
                    .filter(|s| s.name == "shop/front:http")
                    .filter_map(|s| s.key.as_ref().map(|k| k.vip.clone()))
                    .collect();
                Ok(
                    (vips == BTreeSet::from([vec![10, 96, 2, 1], vec![192, 0, 2, 1]]))
                        .then_some(()),
                )
            },
        )
        .await?;
    }

    // Deleting it releases the address: the next LoadBalancer gets it.
    api.delete(Kind::Services, "shop", "front")?;
    let mut other = service("front2", "10.96.2.2", 443);
    other["spec"]["type"] = json!("LoadBalancer");
    eventually("front gone", Duration::from_secs(10), || async {
        let t = table(&members[&leader]).await?;
        Ok((!t.keys().any(|n| n.starts_with("shop/front"))).then_some(()))
    })
    .await?;
    api.apply(Kind::Services, other)?;
    let ingress = eventually(
        "front2 gets the released address",
        Duration::from_secs(10),
        || async { Ok(ingress_ip(api, "front2")) },
    )
    .await?;
    assert_eq!(ingress, "192.0.2.1");

    // Exactly one watch per kind, from the leader; the followers never
    // talked to the API server.
    for id in 1..=3u64 {
        let s = stats_of(api, id);
        if id == leader {
            assert_eq!(s.count("watch services"), 1, "leader {id}: {s:?}");
            assert_eq!(s.count("watch endpointslices"), 1, "leader {id}: {s:?}");
        } else {
            assert_eq!(s.connections, 0, "follower {id} connected: {s:?}");
            assert!(s.requests.is_empty(), "follower {id}: {s:?}");
        }
    }
    Ok(())
}

/// Streams endpoint changes while the leader is killed: the new leader
/// resumes from the replicated cursor (no LIST), and the survivors end with
/// exactly what the API server holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_resumes_from_the_replicated_cursor() -> anyhow::Result<()> {
    let (mut setup, mut hosts) = start(10).await?;
    converged(&setup.members, &expected(&hosts)).await?;
    let old = leader(&setup.members).await?;
    setup.api.reset_stats();

    let mut killed = None;
    for step in 0..200u32 {
        let i = (step % 10) as usize;
        let n = 1 + (step / 10 % 5) as u8;
        hosts[i] = (1..=n).map(|h| h + (step % 7) as u8).collect();
        setup.api.apply(
            Kind::EndpointSlices,
            slice(&format!("svc-{i}-a"), &format!("svc-{i}"), &hosts[i]),
        )?;
        if step == 80 {
            let mut m = setup.members.remove(&old).expect("leader");
            m.signal("KILL")?;
            m.wait_exit(Duration::from_secs(5))?;
            killed = Some(m);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(killed);
    converged(&setup.members, &expected(&hosts)).await?;
    let new = leader(&setup.members).await?;
    assert_ne!(new, old);
    let s = stats_of(&setup.api, new);
    assert_eq!(
        s.count("list services"),
        0,
        "the new leader relisted: {s:?}"
    );
    assert_eq!(
        s.count("list endpointslices"),
        0,
        "the new leader relisted: {s:?}"
    );
    assert!(s.count("watch endpointslices") >= 1, "{s:?}");

    // The killed member comes back and catches up from the log.
    let m = Member::start(&setup.layout.config(old))?;
    setup.members.insert(old, m);
    converged(&setup.members, &expected(&hosts)).await?;
    Ok(())
}

/// The API server goes away: the table keeps serving, the leader reports
/// since when it is disconnected, and when the server is back the changes
/// made meanwhile arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_keeps_the_table_and_converges_after() -> anyhow::Result<()> {
    let (setup, mut hosts) = start(5).await?;
    let Setup { api, members, .. } = &setup;
    converged(members, &expected(&hosts)).await?;
    let leader = leader(members).await?;

    api.set_refusing(true).await;
    hosts[2] = vec![1, 2, 3];
    api.apply(Kind::EndpointSlices, slice("svc-2-a", "svc-2", &hosts[2]))?;
    api.apply(Kind::Services, service("bad", "not-an-ip", 80))?;
    let since = eventually(
        "the leader reports the outage",
        Duration::from_secs(15),
        || async {
            let s = members[&leader]
                .client()
                .await?
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            Ok(s.source
                .filter(|s| s.disconnected_since_unix_ms > 0)
                .map(|s| s.disconnected_since_unix_ms))
        },
    )
    .await?;
    assert!(since > 0);
    let (code, out, _) = members[&leader].lbctl(&["status"])?;
    assert_eq!(code, 0);
    assert!(out.contains("disconnected since"), "{out}");
    let (_, metrics) = members[&leader].http_get("/metrics")?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lb_source_disconnected_since_seconds ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Fail static: the table before the outage, on every member.
    let mut before = expected(&hosts);
    before.insert(
        "shop/svc-2:http".into(),
        (
            "10.96.1.3:80".into(),
            vec!["10.1.5.1:8080 1".into(), "10.1.5.2:8080 1".into()],
        ),
    );
    for m in members.values() {
        assert_eq!(table(m).await?, before);
    }

    api.set_refusing(false).await;
    converged(members, &expected(&hosts)).await?;
    eventually("reconnected", Duration::from_secs(15), || async {
        let s = members[&leader]
            .client()
            .await?
            .get_status(pb::GetStatusRequest {})
            .await?
            .into_inner();
        Ok(s.source
            .filter(|s| s.disconnected_since_unix_ms == 0)
            .map(|_| ()))
    })
    .await?;
    Ok(())
}

/// Malformed objects are left out with a warning; they never stop the
/// watch nor delete what is programmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_are_skipped() -> anyhow::Result<()> {
    let (setup, mut hosts) = start(2).await?;
    let Setup { api, members, .. } = &setup;
    converged(members, &expected(&hosts)).await?;
    let leader = leader(members).await?;

    // Bad port numbers, an unknown protocol, a duplicate port, bad
    // addresses, a type the client cannot even decode.
    api.apply(
        Kind::Services,
        json!({"metadata": {"name": "bad-ports", "namespace": "shop"}, "spec": {"clusterIP": "10.96.9.1", "ports": [
            {"name": "a", "port": 70000}, {"name": "b", "port": 0}, {"name": "c", "port": 81, "protocol": "ICMP"},
            {"name": "http", "port": 80}, {"name": "dup", "port": 80}]}}),
    )?;
    api.apply(
        Kind::Services,
        json!({"metadata": {"name": "undecodable", "namespace": "shop"}, "spec": {"ports": [{"port": "eighty"}]}}),
    )?;
    let mut big = slice("svc-0-big", "svc-0", &[]);
    big["endpoints"] = json!((0..3000).map(|i| json!({"addresses": [if i % 2 == 0 { format!("10.2.{}.{}", i / 250, i % 250) } else { "not-an-ip".into() }]})).collect::<Vec<_>>());
    api.apply(Kind::EndpointSlices, big)?;
    // A Service already served turns malformed: what it had stays.
    let mut broken = service("svc-1", "10.96.1.2", 80);
    broken["spec"]["ports"][0]["port"] = json!(123_456);
    api.apply(Kind::Services, broken)?;
    // And a good change after all that still arrives.
    hosts[1] = vec![9];
    api.apply(Kind::EndpointSlices, slice("svc-1-a", "svc-1", &hosts[1]))?;

    let mut want = expected(&hosts);
    want.insert(
        "shop/bad-ports:http".into(),
        ("10.96.9.1:80".into(), vec![]),
    );
    let mut backends0: Vec<String> = want["shop/svc-0:http"].1.clone();
    backends0.extend(
        (0..3000)
            .step_by(2)
            .map(|i| format!("10.2.{}.{}:8080 1", i / 250, i % 250)),
    );
    backends0.sort();
    want.get_mut("shop/svc-0:http").expect("svc-0").1 = backends0;
    converged(members, &want).await?;
    let (_, metrics) = members[&leader].http_get("/metrics")?;
    let warnings: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_kube_translation_warnings_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(warnings >= 5, "warnings counted: {warnings}");
    let malformed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_kube_malformed_objects_total{kind=\"services\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(malformed, 1, "the undecodable Service is counted");
    Ok(())
}

/// One standalone member limited to one namespace and a label: dropped
/// watches and answers of 500 cost a resume from the cursor, never a
/// relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_errors_resume_and_filters_hold() -> anyhow::Result<()> {
    let api = FakeApi::start(Duration::from_secs(1)).await?;
    let mut labelled = service("svc-0", "10.96.1.1", 80);
    labelled["metadata"]["labels"] = json!({"expose": "yes"});
    api.apply(Kind::Services, labelled.clone())?;
    api.apply(Kind::EndpointSlices, slice("svc-0-a", "svc-0", &[1, 2]))?;
    // Not selected: no label, or another namespace.
    api.apply(Kind::Services, service("svc-1", "10.96.1.2", 80))?;
    let mut elsewhere = service("svc-2", "10.96.1.3", 80);
    elsewhere["metadata"]["namespace"] = json!("other");
    elsewhere["metadata"]["labels"] = json!({"expose": "yes"});
    api.apply(Kind::Services, elsewhere)?;

    let dir = tempfile::tempdir()?;
    api.write_kubeconfig(dir.path(), "kube")?;
    let config = dir.path().join("member.toml");
    std::fs::write(
        &config,
        "[node]\nid = 1\n\n[source.kubernetes]\nkubeconfig = \"kube.kubeconfig\"\nnamespace = \"shop\"\nlabel_selector = \"expose=yes\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n",
    )?;
    let member = Member::start(&config)?;
    let members = BTreeMap::from([(1, member)]);
    let mut hosts = vec![vec![1, 2]];
    converged(&members, &expected(&hosts)).await?;

    api.reset_stats();
    api.drop_watches();
    hosts[0] = vec![3];
    api.apply(Kind::EndpointSlices, slice("svc-0-a", "svc-0", &hosts[0]))?;
    converged(&members, &expected(&hosts)).await?;
    api.fail_next(3);
    api.drop_watches();
    hosts[0] = vec![4, 5];
    api.apply(Kind::EndpointSlices, slice("svc-0-a", "svc-0", &hosts[0]))?;
    converged(&members, &expected(&hosts)).await?;
    let s = stats_of(&api, 1);
    assert_eq!(
        s.count("list services") + s.count("list endpointslices"),
        0,
        "{s:?}"
    );
    assert!(
        s.count("watch endpointslices") >= 2,
        "resumed after each drop: {s:?}"
    );
    Ok(())
}
