//! LoadBalancer addresses end to end, as an operator meets them: kubectl
//! against the test API server, three members, the pool 192.0.2.0/28.
//! No address is given that another Service uses or shows, a status
//! address is kept (a migration from another controller), every member's
//! data wiped and rebuilt gives every Service the address it had, a
//! Service turned back to ClusterIP loses its status, and lbctl survives
//! a closed pipe.

use std::collections::BTreeMap;
use std::time::Duration;

use ha_tests::eventually;
use ha_tests::fake_api::{FakeApi, Kind};
use ha_tests::kube::{kubectl, leader, start};
use serde_json::json;

/// The `status.loadBalancer.ingress` addresses of Service shop/`name`.
fn ingress(api: &FakeApi, name: &str) -> Vec<String> {
    api.get(Kind::Services, "shop", name)
        .and_then(|s| {
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|i| i["ip"].as_str().map(str::to_owned))
                        .collect()
                })
        })
        .unwrap_or_default()
}

async fn ingress_becomes(api: &FakeApi, name: &str, want: &[&str]) -> anyhow::Result<()> {
    eventually(
        &format!("{name}'s status shows {want:?}"),
        Duration::from_secs(20),
        || async { Ok((ingress(api, name) == want).then_some(())) },
    )
    .await
}

const MANIFESTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec:
  externalIPs: [192.0.2.1]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: asks, namespace: shop}
spec:
  type: LoadBalancer
  loadBalancerIP: 192.0.2.1
  ports: [{name: http, port: 80}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_never_collide_are_kept_and_survive_a_rebuild() -> anyhow::Result<()> {
    let (setup, _) = start(0).await?;
    let api = &setup.api;
    let kubeconfig = api.write_kubeconfig(setup.dir.path(), "kubectl")?;
    let kc = |args: &[&str]| kubectl(&kubeconfig, args);
    // Left by other controllers before the appliance: a foreign class's
    // LoadBalancer showing .2, and one of ours (MetalLB's before a
    // migration) showing .9.
    api.apply(
        Kind::Services,
        json!({"metadata": {"name": "other", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other",
                "ports": [{"name": "http", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}}),
    )?;
    api.apply(
        Kind::Services,
        json!({"metadata": {"name": "migrated", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}}),
    )?;
    let leader_id = leader(&setup.members).await?;
    ingress_becomes(api, "migrated", &["192.0.2.9"]).await?;

    let manifest = setup.dir.path().join("shop.yaml");
    std::fs::write(&manifest, MANIFESTS)?;
    let path = manifest.to_str().unwrap_or_default();
    kc(&["apply", "-f", path])?;
    // .1 is ext's externalIP, .2 the other controller's: web gets .3.
    ingress_becomes(api, "web", &["192.0.2.3"]).await?;
    // asks asked for ext's externalIP: refused, it stays pending, and the
    // leader says why.
    let log = eventually("the refusal logged", Duration::from_secs(20), || async {
        let log = setup.members[&leader_id].log();
        Ok(log
            .contains("requested address 192.0.2.1 refused: used by Service shop/ext")
            .then_some(log))
    })
    .await?;
    assert!(ingress(api, "asks").is_empty(), "{log}");
    // The operator sees it without the leader's log: `lbctl status`
    // counts it and shows the last few, `lbctl events` streams the next
    // one with a readable time.
    let leader_member = &setup.members[&leader_id];
    let (_, status, _) = leader_member.lbctl(&["status"])?;
    assert!(
        status.contains("  warnings ") && status.contains("requested address 192.0.2.1 refused"),
        "{status}"
    );
    let mut events = std::process::Command::new(ha_tests::binary("lbctl")?)
        .args([
            "--endpoint",
            &format!("http://{}", leader_member.admin),
            "events",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let reader = std::io::BufReader::new(
        events
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let lines = std::thread::spawn(move || {
        use std::io::BufRead as _;
        reader
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains(" source ") && l.contains("shop/asks2"))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asks2 = setup.dir.path().join("asks2.yaml");
    std::fs::write(
        &asks2,
        MANIFESTS[MANIFESTS.rfind("---").unwrap_or(0)..].replace("name: asks,", "name: asks2,"),
    )?;
    kc(&["apply", "-f", asks2.to_str().unwrap_or_default()])?;
    let found = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || lines.join()),
    )
    .await;
    let _ = events.kill();
    let line = found
        .map_err(|_| anyhow::anyhow!("no warning event in 20 s"))??
        .map_err(|_| anyhow::anyhow!("the events reader panicked"))?
        .ok_or_else(|| anyhow::anyhow!("lbctl events ended without the warning"))?;
    let stamp = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
    assert!(
        stamp.len() == 24
            && stamp.starts_with("20")
            && stamp.ends_with('Z')
            && stamp.as_bytes()[10] == b' ',
        "not a readable time: {line}"
    );
    // The table stays aligned whatever the names' lengths: every column
    // starts where its header does.
    let (_, table, _) = leader_member.lbctl(&["services"])?;
    let at = table
        .lines()
        .next()
        .and_then(|h| h.find("PROTO"))
        .unwrap_or(0);
    assert!(
        at > 0
            && table
                .lines()
                .skip(1)
                .all(|l| l[..at].ends_with("  ") && !l[at..].starts_with(' ')),
        "{table}"
    );
    // Found by Kubernetes name (all its ports) and by address.
    for what in ["shop/web", "192.0.2.3:80", "192.0.2.3"] {
        let (code, out, err) = leader_member.lbctl(&["services", what])?;
        assert!(
            code == 0 && out.contains("shop/web:http"),
            "{what}: {out}{err}"
        );
    }
    // The migrated Service kept its address all along.
    assert_eq!(ingress(api, "migrated"), ["192.0.2.9"]);
    let before: BTreeMap<&str, Vec<String>> = ["web", "migrated", "asks", "other"]
        .into_iter()
        .map(|n| (n, ingress(api, n)))
        .collect();

    // Every member's data wiped: the rebuilt appliance gives every
    // Service the address it had (the statuses are the first claim).
    let mut members = setup.members;
    members.clear();
    for id in 1..=3 {
        std::fs::remove_dir_all(setup.layout.dir.join(format!("data-{id}")))?;
    }
    let members = setup.layout.start_all()?;
    let rebuilt = leader(&members).await?;
    eventually(
        "the rebuilt leader serves web",
        Duration::from_secs(30),
        || async {
            let (code, out, _) = members[&rebuilt].lbctl(&["services"])?;
            Ok((code == 0 && out.contains("192.0.2.3:80")).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: BTreeMap<&str, Vec<String>> = before.keys().map(|n| (*n, ingress(api, n))).collect();
    assert_eq!(after, before, "the rebuild moved an address");

    // web back to ClusterIP (an operator's edit of the manifest): its
    // status no longer shows the address, and the address is free again.
    std::fs::write(
        &manifest,
        MANIFESTS.replacen(
            "name: web, namespace: shop}\nspec:\n  type: LoadBalancer",
            "name: web, namespace: shop}\nspec:\n  type: ClusterIP",
            1,
        ),
    )?;
    kc(&["apply", "-f", path])?;
    ingress_becomes(api, "web", &[]).await?;
    let later = setup.dir.path().join("later.yaml");
    std::fs::write(
        &later,
        "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: shop}\n\
         spec:\n  type: LoadBalancer\n  ports: [{name: http, port: 80}]\n",
    )?;
    kc(&["apply", "-f", later.to_str().unwrap_or_default()])?;
    ingress_becomes(api, "later", &["192.0.2.3"]).await?;

    // `lbctl services | true`: the reader is gone before lbctl writes;
    // lbctl ends quietly, without a panic.
    let lbctl = ha_tests::binary("lbctl")?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --endpoint http://{} services | true",
            lbctl.display(),
            members[&rebuilt].admin
        ))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    Ok(())
}
