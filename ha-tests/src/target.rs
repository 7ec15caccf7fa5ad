//! A game day against a running appliance:
//!
//! ```sh
//! ha-tests drill transfer-and-drain --target \
//!     --endpoint https://lb1:9443 --endpoint https://lb2:9443 --endpoint https://lb3:9443 \
//!     --probe 192.0.2.10:80 [--probe ...] [--ca ca.pem --cert lbctl.pem --key lbctl-key.pem]
//! ```
//!
//! Only non-destructive steps, through the operator's own `lbctl` (the
//! workspace's, or `LBCTL_BIN`): leadership goes to another member, the old
//! leader is drained (its VIPs move to the others) and undrained (it gets
//! its share back). Meanwhile every `--probe` address gets a new TCP
//! connection and an HTTP/1.0 `GET /` 50 times a second; any request that
//! fails fails the drill, as does a step that does not take effect in
//! 10 s. The member is undrained even when a step fails. Same JSON report
//! as the other drills (`tier` "target"; no writes, so `commands_lost` is
//! null).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::l2lab::unix_now;
use crate::report::Report;
use crate::traffic::Traffic;

/// The drills that may run against a running appliance.
pub const TARGET_DRILLS: [&str; 1] = ["transfer-and-drain"];

/// A running appliance and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Admin API endpoints, as lbctl's `--endpoint`.
    pub endpoints: Vec<String>,
    /// VIP:port addresses that answer HTTP.
    pub probes: Vec<SocketAddr>,
    /// lbctl's TLS arguments (`--ca`, `--cert`, `--key` and their files).
    pub tls: Vec<String>,
    /// Requests per second to each probe.
    pub rate: u64,
}

impl Target {
    /// Runs `lbctl -o json ARGS` against the appliance.
    async fn lbctl(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut command = tokio::process::Command::new(crate::binary("lbctl")?);
        for e in &self.endpoints {
            command.arg("--endpoint").arg(e);
        }
        let out = command
            .args(&self.tls)
            .args(["-o", "json"])
            .args(args)
            .output()
            .await
            .context("cannot run lbctl")?;
        anyhow::ensure!(
            out.status.success(),
            "lbctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("lbctl {}: output", args.join(" ")))
    }

    /// The leader and the voters, as the first reachable member says.
    async fn cluster(&self) -> anyhow::Result<(u64, Vec<u64>)> {
        let status = self.lbctl(&["status"]).await?;
        let cluster = &status["cluster"];
        let leader = cluster["leader"].as_u64().unwrap_or(0);
        let members = cluster["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["id"].as_u64()).collect())
            .unwrap_or_default();
        Ok((leader, members))
    }

    /// VIP -> the members announcing it now.
    async fn announcers(&self) -> anyhow::Result<Vec<(String, Vec<u64>)>> {
        let vips = self.lbctl(&["vips"]).await?;
        Ok(vips["vips"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|v| {
                        let by = v["announced_by"]
                            .as_array()
                            .map(|b| b.iter().filter_map(Value::as_u64).collect())
                            .unwrap_or_default();
                        (v["vip"].as_str().unwrap_or_default().to_owned(), by)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Polls `check` every 50 ms for up to 10 s.
    async fn until<F, Fut>(&self, what: &str, check: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        crate::eventually(what, Duration::from_secs(10), || async {
            Ok(check().await?.then_some(()))
        })
        .await
    }
}

fn since_ms(t: f64) -> u64 {
    ((unix_now() - t) * 1000.0).max(0.0) as u64
}

/// Runs `transfer-and-drain` against `target`.
pub async fn run(name: &str, target: &Target) -> anyhow::Result<Report> {
    anyhow::ensure!(
        TARGET_DRILLS.contains(&name),
        "{name} is not a drill for a running appliance; these are: {}",
        TARGET_DRILLS.join(", ")
    );
    anyhow::ensure!(
        !target.endpoints.is_empty(),
        "--target needs at least one --endpoint"
    );
    anyhow::ensure!(
        !target.probes.is_empty(),
        "--target needs at least one --probe VIP:PORT"
    );
    let mut report = Report {
        drill: name.into(),
        tier: "target",
        ..Report::default()
    };
    let (leader, members) = target.cluster().await?;
    anyhow::ensure!(leader != 0, "the appliance has no leader now");
    let to = *members
        .iter()
        .find(|m| **m != leader)
        .context("the appliance has one member: nothing to hand over to")?;
    let traffic: Vec<(SocketAddr, Traffic)> = target
        .probes
        .iter()
        .map(|p| (*p, Traffic::start(*p, target.rate)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t0 = unix_now();
    let steps = async {
        target
            .lbctl(&["transfer-leadership", &to.to_string()])
            .await?;
        target
            .until("leadership transferred", || async {
                Ok(target.cluster().await?.0 == to)
            })
            .await?;
        report.time_to_new_leader_ms = Some(since_ms(t0));
        let t1 = unix_now();
        target
            .lbctl(&["member", "drain", &leader.to_string()])
            .await?;
        target
            .until("the drained member announcing nothing", || async {
                let now = target.announcers().await?;
                Ok(now
                    .iter()
                    .all(|(_, by)| !by.is_empty() && !by.contains(&leader)))
            })
            .await?;
        report.time_to_vip_moved_ms = Some(since_ms(t1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok(())
    };
    let outcome = steps.await;
    // Whatever happened, the member is not left drained.
    let undrained = target
        .lbctl(&["member", "undrain", &leader.to_string()])
        .await;
    if let Err(e) = outcome {
        report.failures.push(format!("{e:#}"));
    }
    match undrained {
        Ok(_) => {
            let back = target
                .until(
                    "every VIP announced once, the undrained member's share back",
                    || async {
                        let now = target.announcers().await?;
                        Ok(now.iter().all(|(_, by)| by.len() == 1)
                            && (now.len() < members.len()
                                || now.iter().any(|(_, by)| by.contains(&leader))))
                    },
                )
                .await;
            match back {
                Ok(()) => report.time_to_converged_ms = Some(since_ms(t0)),
                Err(e) => report.failures.push(format!("{e:#}")),
            }
        }
        Err(e) => report
            .failures
            .push(format!("member {leader} may still be drained: {e:#}")),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (probe, t) in traffic {
        report.add_traffic(&probe.to_string(), &t.finish().await, false);
    }
    report.passed = report.failures.is_empty();
    Ok(report)
}
