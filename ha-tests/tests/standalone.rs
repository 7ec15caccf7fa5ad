//! Journey 1, "try it on a VM": one standalone member serves the example
//! services file; lbctl shows it; the file is edited, broken and fixed
//! while the member runs, and the table follows the file without ever
//! losing what it serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ha_tests::{Member, eventually, replace_file};
use proto::admin::v1 as pb;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name)
}

/// The example member config and services file in a temp dir, with the
/// admin API on a free port and the given file check interval.
fn setup(check_interval: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let config = std::fs::read_to_string(example("standalone.toml"))?
        .replace("127.0.0.1:9443", "127.0.0.1:0")
        .replace("127.0.0.1:9445", "127.0.0.1:0")
        .replace(
            "check_interval = \"1s\"",
            &format!("check_interval = \"{check_interval}\""),
        );
    anyhow::ensure!(
        config.contains(check_interval),
        "example config changed shape"
    );
    let config_path = dir.path().join("lb-node.toml");
    std::fs::write(&config_path, config)?;
    let services = dir.path().join("services.toml");
    std::fs::copy(example("services.toml"), &services)?;
    Ok((dir, config_path, services))
}

async fn services(member: &Member) -> anyhow::Result<Vec<proto::state::v1::VirtualService>> {
    Ok(member
        .client()
        .await?
        .list_services(pb::ListServicesRequest::default())
        .await?
        .into_inner()
        .services)
}

async fn status_of(member: &Member) -> anyhow::Result<pb::GetStatusResponse> {
    Ok(member
        .client()
        .await?
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner())
}

fn weight_of(
    services: &[proto::state::v1::VirtualService],
    name: &str,
    backend: usize,
) -> Option<u32> {
    services
        .iter()
        .find(|s| s.name == name)?
        .backends
        .get(backend)
        .map(|b| b.weight)
}

#[tokio::test]
async fn member_serves_the_example_and_lbctl_shows_it() -> anyhow::Result<()> {
    let (_dir, config, _) = setup("1s")?;
    let mut member = Member::start(&config)?;

    let (code, out, err) = member.lbctl(&["status"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("services   3"), "{out}");
    let (code, out, err) = member.lbctl(&["services", "web"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("198.51.100.11:8080") && out.contains("weight 3"),
        "{out}"
    );
    let (code, _, err) = member.lbctl(&["services", "no-such-service"])?;
    assert_eq!(code, 4, "not found has its own exit code");
    assert!(
        err.contains("no service matches \"no-such-service\""),
        "{err}"
    );
    let (code, out, _) = member.lbctl(&["-o", "json", "status"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("\"programmed_destinations\":6"),
        "the dataplane holds every destination: {out}"
    );

    // A standalone member owns and announces every VIP it serves.
    let (code, out, _) = member.lbctl(&["vips"])?;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("1")
                && l.split_whitespace().nth(2) == Some("1"))
            .count()
            == 3,
        "{out}"
    );

    // SIGTERM stops it cleanly.
    member.signal("TERM")?;
    let status = member.wait_exit(Duration::from_secs(10))?;
    assert!(status.success(), "{status}: {}", member.log());
    Ok(())
}

#[tokio::test]
async fn edits_are_applied_and_a_broken_file_keeps_the_table() -> anyhow::Result<()> {
    let (_dir, config, services_path) = setup("200ms")?;
    let mut member = Member::start(&config)?;
    let original = std::fs::read_to_string(&services_path)?;

    // An edit (written the way editors do, by rename) is picked up.
    let edited = original.replacen("weight = 3", "weight = 5", 1);
    replace_file(&services_path, &edited)?;
    eventually("the new weight", Duration::from_secs(10), || async {
        Ok((weight_of(&services(&member).await?, "web", 0) == Some(5)).then_some(()))
    })
    .await?;
    // It cost one command and one dataplane operation, not a reload of everything.
    let status = status_of(&member).await?;
    assert_eq!(status.dataplane.context("dataplane")?.last_sync_ops, 1);

    // A broken file: the error names the service and the field, and the
    // table is kept as it was.
    let before = services(&member).await?;
    let broken = edited.replacen("port = 53", "port = 70000", 1);
    replace_file(&services_path, &broken)?;
    let line = member.wait_for_log("services file rejected", Duration::from_secs(10))?;
    assert!(
        line.contains("service[1].port (service \"dns\"): 70000 is not a port"),
        "{line}"
    );
    let status = status_of(&member).await?;
    assert!(
        status
            .source
            .context("source")?
            .last_error
            .contains("service[1].port")
    );
    assert_eq!(
        services(&member).await?,
        before,
        "a broken file must not touch the table"
    );

    // Fixed again (with one service removed): applied, and the error clears.
    let without_sip = edited[..edited
        .find("[[service]]\nname = \"sip\"")
        .context("sip service")?]
        .to_owned();
    replace_file(&services_path, &without_sip)?;
    eventually("sip removed", Duration::from_secs(10), || async {
        Ok((services(&member).await?.len() == 2).then_some(()))
    })
    .await?;
    let status = status_of(&member).await?;
    assert_eq!(status.source.context("source")?.last_error, "");
    assert_eq!(
        status.dataplane.context("dataplane")?.programmed_services,
        2
    );
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_at_once() -> anyhow::Result<()> {
    // With an hour between checks, only SIGHUP can explain a reload.
    let (_dir, config, services_path) = setup("1h")?;
    let mut member = Member::start(&config)?;
    let edited = std::fs::read_to_string(&services_path)?.replacen("weight = 3", "weight = 9", 1);
    std::fs::write(&services_path, edited)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        weight_of(&services(&member).await?, "web", 0),
        Some(3),
        "not reloaded before SIGHUP"
    );

    member.signal("HUP")?;
    eventually("the SIGHUP reload", Duration::from_secs(10), || async {
        Ok((weight_of(&services(&member).await?, "web", 0) == Some(9)).then_some(()))
    })
    .await?;
    member.wait_for_log("SIGHUP: reloading", Duration::from_secs(1))?;
    Ok(())
}

#[test]
fn a_broken_file_at_start_is_refused_with_the_field() -> anyhow::Result<()> {
    let (_dir, config, services_path) = setup("1s")?;
    let text = std::fs::read_to_string(&services_path)?.replacen(
        "vip = \"192.0.2.10\"",
        "vip = \"192.0.2.256\"",
        1,
    );
    std::fs::write(&services_path, text)?;
    let out = std::process::Command::new(ha_tests::binary("lb-node")?)
        .arg("--config")
        .arg(&config)
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "service[0].vip (service \"web\"): \"192.0.2.256\" is not an IPv4 or IPv6 address"
        ),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_emptied_file_waits_for_sighup() -> anyhow::Result<()> {
    let (_dir, config, services_path) = setup("200ms")?;
    let mut member = Member::start(&config)?;
    eventually("the example served", Duration::from_secs(10), || async {
        Ok((services(&member).await?.len() == 3).then_some(()))
    })
    .await?;
    // Emptied (an accident more often than an intent): kept, and said.
    replace_file(&services_path, "")?;
    let line = member.wait_for_log("services file rejected", Duration::from_secs(10))?;
    assert!(
        line.contains("removes 3 of the 3 services (it declares none)") && line.contains("SIGHUP"),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(services(&member).await?.len(), 3, "the table was kept");
    let status = status_of(&member).await?;
    assert!(
        status
            .source
            .context("source")?
            .last_error
            .contains("SIGHUP")
    );
    // The operator confirms.
    member.signal("HUP")?;
    eventually("emptied on SIGHUP", Duration::from_secs(10), || async {
        Ok(services(&member).await?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_file_written_in_place_is_not_applied_half_written() -> anyhow::Result<()> {
    let (_dir, config, services_path) = setup("200ms")?;
    let member = Member::start(&config)?;
    eventually("the example served", Duration::from_secs(10), || async {
        Ok((services(&member).await?.len() == 3).then_some(()))
    })
    .await?;
    // Served from the file read at start: the source's first check
    // finds nothing to change.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = std::fs::read_to_string(&services_path)?;
    // A slow writer: the first service only for 400 ms (two checks), then
    // the whole file again, in place (not renamed over).
    let first = &full[..full
        .find("[[service]]\nname = \"dns\"")
        .context("dns service")?];
    std::fs::write(&services_path, first)?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::write(&services_path, &full)?;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let log = member.log();
    assert!(
        !log.contains("services file loaded"),
        "the half-written file was applied: {log}"
    );
    assert_eq!(services(&member).await?.len(), 3);
    // A change that stays is applied, after the settle interval.
    let edited = full.replacen("weight = 3", "weight = 4", 1);
    std::fs::write(&services_path, &edited)?;
    eventually("the settled edit", Duration::from_secs(10), || async {
        Ok((weight_of(&services(&member).await?, "web", 0) == Some(4)).then_some(()))
    })
    .await?;
    Ok(())
}

/// Start-up failures the operator fixes in the configuration exit 2 and
/// name the field (issue 24): a port another process holds, a data
/// directory that is a file.
#[test]
fn a_port_in_use_or_a_data_dir_that_is_a_file_exits_2_naming_the_field() -> anyhow::Result<()> {
    let (dir, config, _services) = setup("1s")?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let text = std::fs::read_to_string(&config)?.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    anyhow::ensure!(
        text.contains(&port.to_string()),
        "example config changed shape"
    );
    std::fs::write(&config, text)?;
    let out = std::process::Command::new(ha_tests::binary("lb-node")?)
        .arg("--config")
        .arg(&config)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "admin.listen: cannot listen on 127.0.0.1:{port}: another process"
        )),
        "{err}"
    );
    drop(taken);

    // A cluster member whose data_dir is a file.
    let layout = ha_tests::ClusterLayout::write(dir.path(), 1, "", "exit-codes")?;
    let data = dir.path().join("data-1");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::write(&data, "not a directory")?;
    let out = std::process::Command::new(ha_tests::binary("lb-node")?)
        .arg("--config")
        .arg(layout.config(1))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cluster.data_dir: ") && err.contains("is not a directory"),
        "{err}"
    );
    Ok(())
}
