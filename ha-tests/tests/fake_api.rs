//! The fake API server checked against real clients: Debian's kubectl
//! (create, get, patch status, delete through discovery) and kube-rs
//! (list pages, watch with bookmarks, 410 after compaction).

use std::process::Command;
use std::time::Duration;

use ha_tests::fake_api::{FakeApi, Kind};
use ha_tests::kube::kubectl;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_lists_and_deletes() -> anyhow::Result<()> {
    let api = FakeApi::start(Duration::from_secs(1)).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), "kubectl")?;
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  type: LoadBalancer\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\n\
         ports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.1.0.1\"]\n  conditions: {ready: true}\n",
    )?;
    let created = kubectl(
        &kubeconfig,
        &["create", "-f", manifest.to_str().unwrap_or_default()],
    )?;
    assert!(created.contains("service/web created"), "{created}");
    assert!(
        created.contains("endpointslice.discovery.k8s.io/web-1 created"),
        "{created}"
    );

    // What kubectl reads back is what the server stored, with a clusterIP.
    let got: serde_json::Value = serde_json::from_str(&kubectl(
        &kubeconfig,
        &["get", "services", "-n", "shop", "-o", "json"],
    )?)?;
    let items = got["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{got}");
    assert_eq!(items[0]["metadata"]["name"], "web");
    assert!(
        items[0]["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.96.")),
        "{got}"
    );
    let table = kubectl(&kubeconfig, &["get", "endpointslices", "-A"])?;
    assert!(table.contains("web-1"), "{table}");

    // The status subresource, as a load-balancer controller writes it
    // (kubectl has --subresource from 1.24; with Debian's older kubectl the
    // test patches through kube-rs, also a real client).
    let version = kubectl(&kubeconfig, &["version", "--client", "-o", "json"])?;
    let minor: u32 = serde_json::from_str::<serde_json::Value>(&version)?["clientVersion"]["minor"]
        .as_str()
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or(0);
    let status = r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}"#;
    if minor >= 24 {
        kubectl(
            &kubeconfig,
            &[
                "patch",
                "service",
                "web",
                "-n",
                "shop",
                "--subresource=status",
                "--type=merge",
                "-p",
                status,
            ],
        )?;
    } else {
        eprintln!("kubectl 1.{minor} has no --subresource; patching the status with kube-rs");
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let services: Api<Service> = Api::namespaced(kube::Client::try_from(config)?, "shop");
        let patch: serde_json::Value = serde_json::from_str(status)?;
        services
            .patch_status(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
    }
    let stored = api.get(Kind::Services, "shop", "web").expect("stored");
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.10"
    );
    // A patch of the main resource leaves the status alone.
    kubectl(
        &kubeconfig,
        &[
            "patch",
            "service",
            "web",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            r#"{"status":null,"metadata":{"labels":{"tier":"front"}}}"#,
        ],
    )?;
    let stored = api.get(Kind::Services, "shop", "web").expect("stored");
    assert_eq!(stored["metadata"]["labels"]["tier"], "front");
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.10"
    );

    kubectl(&kubeconfig, &["delete", "service", "web", "-n", "shop"])?;
    assert!(api.get(Kind::Services, "shop", "web").is_none());
    let stats = api.stats();
    let kubectl_stats = stats
        .iter()
        .find(|(agent, _)| agent.starts_with("kubectl/"))
        .map(|(_, s)| s.clone())
        .expect("kubectl is counted by its user agent");
    assert!(
        kubectl_stats.count("create services") == 1,
        "{kubectl_stats:?}"
    );
    assert!(
        kubectl_stats.count("delete services") == 1,
        "{kubectl_stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_pages_watches_and_gets_410_after_compaction() -> anyhow::Result<()> {
    let api = FakeApi::start(Duration::from_millis(200)).await?;
    for i in 0..7 {
        api.apply(
            Kind::EndpointSlices,
            json!({"metadata": {"name": format!("s{i}"), "namespace": "ns"}, "addressType": "IPv4", "endpoints": []}),
        )?;
    }
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), "test")?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let slices: Api<EndpointSlice> = Api::all(client.clone());

    // Pages of 3: 3 + 3 + 1, one consistent version.
    let first = slices.list(&ListParams::default().limit(3)).await?;
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = slices
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await?;
    assert_eq!(second.items.len(), 3);
    let third = slices
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(&second.metadata.continue_.clone().expect("token")),
        )
        .await?;
    assert_eq!(third.items.len(), 1);
    assert!(third.metadata.continue_.is_none_or(|c| c.is_empty()));
    let version = first.metadata.resource_version.clone().expect("version");

    // Watch from the list's version: a change, then a bookmark.
    let services: Api<Service> = Api::all(client.clone());
    let stream = slices
        .watch(&WatchParams::default().timeout(10), &version)
        .await?;
    let mut stream = std::pin::pin!(stream);
    api.delete(Kind::EndpointSlices, "ns", "s0")?;
    let mut saw_delete = false;
    let mut saw_bookmark = false;
    while !(saw_delete && saw_bookmark) {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await? {
            Some(Ok(WatchEvent::Deleted(o))) => {
                assert_eq!(o.metadata.name.as_deref(), Some("s0"));
                saw_delete = true;
            }
            Some(Ok(WatchEvent::Bookmark(b))) => {
                saw_bookmark = saw_delete;
                assert!(!b.metadata.resource_version.is_empty());
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    // After compaction, the old version is gone: 410 in the watch.
    api.compact();
    let stream = services.watch(&WatchParams::default(), &version).await?;
    let mut stream = std::pin::pin!(stream);
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await? {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => anyhow::bail!("expected 410, got {other:?}"),
    }
    Ok(())
}

/// The kubectl commands of README's *Replacing kube-proxy*, steps 3 and 4,
/// run as written (by `sh`, from the README's own text) against a
/// kube-proxy DaemonSet: the backup copy is written, the patch gives the
/// pods a node selector no node has, and the rollback takes it away again.
/// A `kubectl replace` of the backup, which the README once said, is
/// refused after the patch (its resourceVersion is stale): checked, so the
/// README does not say it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_switches_kube_proxy_off_and_back() -> anyhow::Result<()> {
    let api = FakeApi::start(Duration::from_secs(1)).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), "kubectl")?;
    api.apply(
        Kind::DaemonSets,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-proxy"}},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-proxy"}},
                    "spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                             "containers": [{"name": "kube-proxy",
                                             "image": "registry.k8s.io/kube-proxy:v1.32.0"}]}
                }
            }
        }),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let readme = include_str!("../../README.md");
    // The shell lines of the README's code blocks that call kubectl on
    // kube-proxy, continuation lines joined.
    let text = readme.replace("\\\n", " ");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kubectl -n kube-system") && l.contains("kube-proxy"))
        .collect();
    let [backup, switch_off, rollback] = lines.as_slice() else {
        panic!("expected the backup, the switch-off and the rollback in the README: {lines:?}");
    };
    let sh = |line: &str| -> anyhow::Result<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .env("KUBECONFIG", &kubeconfig)
            .current_dir(dir.path())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let selector = |api: &FakeApi| {
        api.get(Kind::DaemonSets, "kube-system", "kube-proxy")
            .map(|d| d["spec"]["template"]["spec"]["nodeSelector"].clone())
    };

    sh(backup)?;
    let saved = std::fs::read_to_string(dir.path().join("kube-proxy.yaml"))?;
    assert!(
        saved.contains("kind: DaemonSet") && saved.contains("name: kube-proxy"),
        "{saved}"
    );
    sh(switch_off)?;
    assert_eq!(
        selector(&api),
        Some(json!({"kubernetes.io/os": "linux", "lb-node.io/kube-proxy": "off"}))
    );
    // The backup can no longer be put back as it is.
    let replaced = Command::new("kubectl")
        .args(["-n", "kube-system", "replace", "-f", "kube-proxy.yaml"])
        .env("KUBECONFIG", &kubeconfig)
        .current_dir(dir.path())
        .output()?;
    assert!(!replaced.status.success(), "a stale replace went through");
    assert!(
        String::from_utf8_lossy(&replaced.stderr).contains("has been modified"),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    sh(rollback)?;
    assert_eq!(
        selector(&api),
        Some(json!({"kubernetes.io/os": "linux"})),
        "the rollback leaves kube-proxy's own selector"
    );
    let table = kubectl(&kubeconfig, &["-n", "kube-system", "get", "ds"])?;
    assert!(table.contains("kube-proxy"), "{table}");
    Ok(())
}

/// kubectl exactly as operators use it, without `--validate=false`:
/// `apply` of a multi-document manifest and of a changed copy (the
/// stored objects are the manifest's, no patch directive kept), `get svc`
/// and `-o wide` with the server's columns, `edit`, `apply
/// --dry-run=server` (nothing stored), refused input with the real
/// server's errors (422 with causes, a namespace that does not exist, a
/// clusterIP already held), and `delete -f`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_edit_and_errors_as_a_real_server() -> anyhow::Result<()> {
    let api = FakeApi::start(Duration::from_secs(1)).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), "kubectl")?;
    let kc = |args: &[&str]| kubectl(&kubeconfig, args);
    let failing = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()?;
        anyhow::ensure!(!out.status.success(), "kubectl {args:?} succeeded");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let file = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let v1 = file(
        "v1.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  labels: {app: web}\n\
         spec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports:\n\
         \x20 - {name: http, port: 80, targetPort: 8080}\n\
         \x20 - {name: https, port: 443, targetPort: 8443}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n\
         \x20 labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
         ports: [{name: http, port: 8080, protocol: TCP}]\n\
         endpoints:\n- addresses: [10.1.0.1]\n- addresses: [10.1.0.2]\n",
    )?;
    let out = kc(&["apply", "-f", &v1])?;
    assert!(out.contains("service/web created"), "{out}");
    // The changed copy: https dropped, metrics added, http's target and
    // the endpoints changed.
    let v2 = file(
        "v2.yaml",
        &std::fs::read_to_string(&v1)?
            .replace(
                "  - {name: http, port: 80, targetPort: 8080}\n  - {name: https, port: 443, targetPort: 8443}\n",
                "  - {name: metrics, port: 9090, targetPort: 9090}\n  - {name: http, port: 80, targetPort: 8081}\n",
            )
            .replace("- addresses: [10.1.0.2]\n", "- addresses: [10.1.0.3]\n"),
    )?;
    let out = kc(&["apply", "-f", &v2])?;
    assert!(out.contains("service/web configured"), "{out}");
    let web = api
        .get(Kind::Services, "shop", "web")
        .ok_or_else(|| anyhow::anyhow!("web gone"))?;
    assert_eq!(
        web["spec"]["ports"],
        json!([{"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
               {"name": "http", "port": 80, "targetPort": 8081, "protocol": "TCP"}]),
        "{web}"
    );
    let slice = api
        .get(Kind::EndpointSlices, "shop", "web-1")
        .ok_or_else(|| anyhow::anyhow!("web-1 gone"))?;
    assert_eq!(
        slice["endpoints"],
        json!([{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.3"]}])
    );
    for stored in [&web, &slice] {
        let text = stored["spec"].to_string() + &stored["endpoints"].to_string();
        assert!(!text.contains('$'), "a patch directive was stored: {text}");
    }

    // The server's columns, by short name.
    let table = kc(&["get", "svc", "-n", "shop"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("<pending>") && table.contains("9090/TCP,80/TCP"),
        "{table}"
    );
    let wide = kc(&["get", "svc", "-n", "shop", "-o", "wide"])?;
    assert!(
        wide.contains("SELECTOR") && wide.contains("app=web"),
        "{wide}"
    );
    let slices = kc(&["get", "endpointslices", "-n", "shop"])?;
    assert!(
        slices.contains("ADDRESSTYPE") && slices.contains("10.1.0.1,10.1.0.3"),
        "{slices}"
    );

    // kubectl edit (its editor a script changing a target port).
    let editor = file(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/targetPort: 8081/targetPort: 8082/' \"$1\"\n",
    )?;
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["edit", "svc", "web", "-n", "shop"])
        .env("KUBE_EDITOR", &editor)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = |api: &FakeApi| {
        api.get(Kind::Services, "shop", "web")
            .map(|w| w["spec"]["ports"][1]["targetPort"].clone())
    };
    assert_eq!(port(&api), Some(json!(8082)));
    // A server-side dry run answers but stores nothing.
    let out = kc(&["apply", "-f", &v2, "--dry-run=server"])?;
    assert!(out.contains("(server dry run)"), "{out}");
    assert_eq!(port(&api), Some(json!(8082)), "the dry run was stored");

    // Refused as a real server refuses.
    let bad = file(
        "bad.yaml",
        &std::fs::read_to_string(&v2)?.replace("port: 9090, targetPort", "port: 0, targetPort"),
    )?;
    let err = failing(&["apply", "-f", &bad])?;
    assert!(
        err.contains("is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
        "{err}"
    );
    let elsewhere = file(
        "elsewhere.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: nope}\nspec:\n  ports: [{port: 80}]\n",
    )?;
    let err = failing(&["apply", "-f", &elsewhere])?;
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
    // An explicit clusterIP (the one the allocator would give next, web
    // having had 10.96.0.10) is never handed out again, and a held one is
    // refused.
    let explicit = file(
        "explicit.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: explicit, namespace: shop}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{port: 80}]\n",
    )?;
    kc(&["apply", "-f", &explicit])?;
    let auto = file(
        "auto.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: auto, namespace: shop}\nspec:\n  ports: [{port: 80}]\n",
    )?;
    kc(&["apply", "-f", &auto])?;
    let ip_of = |name: &str| {
        api.get(Kind::Services, "shop", name)
            .map(|s| s["spec"]["clusterIP"].clone())
            .unwrap_or_default()
    };
    assert_ne!(ip_of("auto"), ip_of("explicit"));
    assert_ne!(ip_of("auto"), ip_of("web"));
    let taken = file(
        "taken.yaml",
        &std::fs::read_to_string(&explicit)?.replace("name: explicit", "name: taken"),
    )?;
    let err = failing(&["apply", "-f", &taken])?;
    assert!(err.contains("provided IP is already allocated"), "{err}");

    let out = kc(&["delete", "-f", &v2])?;
    assert!(
        out.contains("namespace \"shop\" deleted") && out.contains("service \"web\" deleted"),
        "{out}"
    );
    ha_tests::eventually(
        "the namespace finalized",
        Duration::from_secs(5),
        || async {
            Ok(api
                .get(Kind::Services, "shop", "auto")
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    let err = failing(&["apply", "-f", &auto])?;
    assert!(err.contains("namespaces \"shop\" not found"), "{err}");
    Ok(())
}
