//! A drill's report: the figures an operator asks for, as one JSON line,
//! and the checks every drill shares (acknowledged writes kept, client
//! traffic answered).
//!
//! Must not: import a drill. Every drill file imports this one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

/// A drill's outcome, printed as one JSON line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub drill: String,
    pub passed: bool,
    /// The longest time client traffic through the VIP went unanswered,
    /// and the requests that failed; None where the drill sends none.
    pub disruption_ms: Option<u64>,
    pub requests_failed: Option<u64>,
    pub requests_sent: Option<u64>,
    /// The longest an answered request took (a request not answered within
    /// `traffic::REQUEST_TIMEOUT` failed).
    pub slowest_answer_ms: Option<u64>,
    /// Where it ran: "loopback" or "netns" (real ARP and packets).
    pub tier: &'static str,
    pub failures: Vec<String>,
    pub commands_lost: Option<u64>,
    pub commands_acknowledged: u64,
    pub time_to_new_leader_ms: Option<u64>,
    pub time_to_vip_moved_ms: Option<u64>,
    pub time_to_converged_ms: Option<u64>,
    /// Figures particular to one drill (the scale run's), added to the
    /// JSON line as they are.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// Every member in `ids` must hold the last acknowledged write or a
    /// later attempted one (`weight_of` reads a member's); counts the
    /// members that lack it as `commands_lost`.
    pub(crate) async fn check_writes<F, Fut>(
        &mut self,
        ids: &[u64],
        acknowledged: u32,
        attempted: u32,
        weight_of: F,
    ) where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<u32>>>,
    {
        self.commands_acknowledged = u64::from(acknowledged);
        let mut lost = 0;
        for id in ids {
            let holds = crate::eventually(
                "the last write applied",
                Duration::from_secs(10),
                || async {
                    Ok(weight_of(*id)
                        .await?
                        .filter(|w| *w >= acknowledged && *w <= attempted))
                },
            )
            .await;
            if holds.is_err() {
                lost += 1;
                self.failures.push(format!(
                    "member {id} lacks acknowledged write {acknowledged}"
                ));
            }
        }
        self.commands_lost = Some(lost);
        if acknowledged == 0 {
            self.failures
                .push("no write was acknowledged: the drill proved nothing".into());
        }
    }

    /// Adds one probe's requests (sent at, answer) to the traffic figures:
    /// the longest outage over all probes, failed and sent summed. Failures
    /// where none may happen (`may_fail` false), and a probe never
    /// answered at all, are broken promises.
    pub(crate) fn add_traffic(
        &mut self,
        to: &str,
        records: &[crate::traffic::Sent],
        may_fail: bool,
    ) {
        let (outage, failed) = crate::traffic::disruption(records);
        if records.iter().all(|r| r.answer.is_none()) {
            self.failures
                .push(format!("no request to {to} was ever answered"));
        }
        if failed > 0 && !may_fail {
            self.failures.push(format!(
                "{failed} of {} requests to {to} failed ({outage} ms unanswered), where none may",
                records.len()
            ));
        }
        self.disruption_ms = Some(self.disruption_ms.unwrap_or(0).max(outage));
        self.requests_failed = Some(self.requests_failed.unwrap_or(0) + failed);
        self.requests_sent = Some(self.requests_sent.unwrap_or(0) + records.len() as u64);
        let slowest = records
            .iter()
            .filter(|r| r.answer.is_some())
            .map(|r| r.took_ms)
            .max();
        self.slowest_answer_ms = self.slowest_answer_ms.max(slowest);
    }

    pub fn json(&self) -> String {
        self.value().to_string()
    }

    /// The report as one JSON object.
    pub fn value(&self) -> serde_json::Value {
        let mut line = json!({
            "drill": self.drill,
            "passed": self.passed,
            "tier": self.tier,
            "disruption_ms": self.disruption_ms,
            "requests_failed": self.requests_failed,
            "requests_sent": self.requests_sent,
            "slowest_answer_ms": self.slowest_answer_ms,
            "commands_lost": self.commands_lost,
            "commands_acknowledged": self.commands_acknowledged,
            "time_to_new_leader_ms": self.time_to_new_leader_ms,
            "time_to_vip_moved_ms": self.time_to_vip_moved_ms,
            "time_to_converged_ms": self.time_to_converged_ms,
            "failures": self.failures,
        });
        if let Some(map) = line.as_object_mut() {
            for (k, v) in &self.extra {
                map.insert(k.clone(), v.clone());
            }
        }
        line
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
