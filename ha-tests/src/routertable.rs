//! What the router drills (`routerdrills`, `scaleout`) read of the
//! router: its kernel table's paths to the VIPs, sampled every 10 ms from
//! its namespace, and whether a table is complete for a mode.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::l2lab::{VIPS, unix_now};
pub use crate::routers::Table;

/// New connections a second the router drills' client opens to each VIP.
pub(crate) const REQUESTS_PER_SECOND: u64 = 50;

/// How the members announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One member per VIP.
    Owner,
    /// Every member every VIP.
    Ecmp,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "owner" => Some(Mode::Owner),
            "ecmp" => Some(Mode::Ecmp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Owner => "owner",
            Mode::Ecmp => "ecmp",
        }
    }
}

/// The router's kernel table, read every 10 ms: (Unix time, VIP ->
/// members its route goes through).
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, Table)>>,
}

impl Sampler {
    pub(crate) fn start(router_ns: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            if crate::netns::enter(&router_ns).is_err() {
                return samples;
            }
            while !halt.load(Ordering::Relaxed) {
                let next = std::time::Instant::now() + Duration::from_millis(10);
                if let Ok(t) = kernel_table() {
                    samples.push((unix_now(), t));
                }
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
            samples
        });
        Sampler { stop, thread }
    }

    pub(crate) fn finish(self) -> Vec<(f64, Table)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// This namespace's routes to the VIPs (`ip -j route`), by next hop.
fn kernel_table() -> anyhow::Result<Table> {
    let out = std::process::Command::new("ip")
        .args(["-j", "route", "show"])
        .output()?;
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut table = Table::new();
    for r in routes.as_array().into_iter().flatten() {
        let Some(dst) = r.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        if !VIPS.contains(&dst) {
            continue;
        }
        let hops: Vec<&serde_json::Value> = match r.get("nexthops").and_then(|n| n.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![r],
        };
        for h in hops {
            let member = h
                .get("gateway")
                .and_then(|g| g.as_str())
                .and_then(|g| g.strip_prefix("10.77.0."))
                .and_then(|m| m.parse::<u64>().ok());
            if let Some(m) = member {
                table.entry(dst.to_owned()).or_default().insert(m);
            }
        }
    }
    Ok(table)
}

/// Whether the table is what the mode asks for with every member in
/// `members`: each VIP through all of them (ECMP), or each through one
/// and every member with one (owner).
pub(crate) fn complete(table: &Table, mode: Mode, members: &BTreeSet<u64>) -> bool {
    match mode {
        Mode::Ecmp => VIPS.iter().all(|v| table.get(*v) == Some(members)),
        Mode::Owner => {
            let owners: BTreeSet<u64> = VIPS
                .iter()
                .filter_map(|v| table.get(*v).filter(|s| s.len() == 1))
                .flat_map(|s| s.iter().copied())
                .collect();
            VIPS.iter()
                .all(|v| table.get(*v).is_some_and(|s| s.len() == 1))
                && &owners == members
        }
    }
}

/// The router's table, read from its namespace by a thread of its own
/// (this one lives in the client's).
pub(crate) fn in_router(router_ns: &str) -> anyhow::Result<Table> {
    let ns = router_ns.to_owned();
    std::thread::spawn(move || {
        crate::netns::enter(&ns)?;
        kernel_table()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the table reader panicked"))?
}
