//! What per-ClusterIP host routes would cost a router, against the one
//! aggregate the appliance announces (docs/kube-proxy.md): three members
//! in ECMP mode announce N service addresses to a BIRD 2 router in the L2
//! lab's namespaces, once as N host routes each, once as the one service
//! CIDR that holds them, and the router installs what it learns in its
//! kernel (ECMP). Reports, for each: the routes in the router's kernel and
//! the paths BIRD imported (`show protocols all`), how long from the
//! members' start until all were there, and BIRD's own memory (`birdc
//! show memory`) and resident size.
//!
//!   cargo build --release --workspace --bins
//!   target/release/bgp-route-cost [--services 50000]
//!
//! Needs root, iproute2 and bird2 (the test command installs them). One
//! JSON line.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ha_tests::l2lab::Lab;
use serde_json::json;

/// The service addresses: the first N of 172.20.0.0/16 (a /16 holds
/// 65,534).
const CIDR: &str = "172.20.0.0/16";

fn address(i: usize) -> String {
    format!("172.20.{}.{}", (i + 1) / 256, (i + 1) % 256)
}

/// Runs one configuration (host routes, or the aggregate) and waits until
/// the router's kernel holds every route and BIRD every path.
fn measure(services: usize, aggregate: bool) -> anyhow::Result<serde_json::Value> {
    let tag = if aggregate { "a" } else { "h" };
    let mut lab = Lab::new(&format!("r{tag}"))?;
    let mut file = String::with_capacity(services * 120);
    for i in 0..services {
        file.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"{}\"\nport = 80\nprotocol = \"tcp\"\n\n[[service.backend]]\naddress = \"10.77.0.200\"\nport = 8080\n\n",
            address(i)
        ));
    }
    lab.services_file = Some(file);
    // The router: BIRD in the client's namespace, every path installed.
    let dir = lab.dir().to_owned();
    let config = dir.join("bird.conf");
    let mut text = String::from(
        "router id 10.77.0.100;\nprotocol device { }\nprotocol kernel { ipv4 { import none; export all; }; merge paths on; }\n\
         template bgp lbnode { local 10.77.0.100 as 65000; passive on; hold time 90;\n  ipv4 { import all; export none; }; }\n",
    );
    for id in 1..=3 {
        text.push_str(&format!(
            "protocol bgp m{id} from lbnode {{ neighbor 10.77.0.{id} as 65001; }}\n"
        ));
    }
    std::fs::write(&config, text)?;
    let socket = dir.join("bird.ctl");
    let mut bird = lab.spawn(
        "c",
        &[
            "bird",
            "-f",
            "-c",
            config.to_str().unwrap_or_default(),
            "-s",
            socket.to_str().unwrap_or_default(),
            "-P",
            dir.join("bird.pid").to_str().unwrap_or_default(),
        ],
    )?;
    let extra = if aggregate {
        format!("service_cidrs = [\"{CIDR}\"]\n")
    } else {
        String::new()
    };
    let started = Instant::now();
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\necmp = true\n{extra}\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n"
        )
    })?;
    let expect = if aggregate { 1 } else { services };
    let count = |lab: &Lab| -> anyhow::Result<usize> {
        Ok(lab
            .exec("c", &["ip", "-4", "route", "show", "proto", "bird"])?
            .lines()
            .filter(|l| l.starts_with("172.20."))
            .count())
    };
    let deadline = started + Duration::from_secs(600);
    let installed = loop {
        let n = count(&lab)?;
        if n >= expect {
            break started.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the router holds {n} of {expect} routes after 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every path in: wait until BIRD has all three members' routes.
    let birdc = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec!["birdc", "-s", socket.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        lab.exec("c", &all)
    };
    let imported = || -> anyhow::Result<usize> {
        let out = birdc(&["show", "protocols", "all"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Routes:")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .sum())
    };
    let paths = loop {
        let n = imported()?;
        if n >= 3 * expect || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let all_paths = started.elapsed();
    let memory = birdc(&["show", "memory"])?;
    let total = memory
        .lines()
        .find(|l| l.trim_start().starts_with("Total:"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let pid: u32 = std::fs::read_to_string(dir.join("bird.pid"))?
        .trim()
        .parse()
        .context("bird's pid")?;
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel_routes = count(&lab)?;
    let _ = bird.kill();
    let _ = bird.wait();
    Ok(json!({
        "announced_as": if aggregate { format!("one aggregate ({CIDR})") } else { "host routes (ECMP mode)".into() },
        "router_kernel_routes": kernel_routes,
        "router_paths_imported": paths,
        "members_started_to_all_routes_installed_ms": installed.as_millis() as u64,
        "members_started_to_all_paths_in_bird_ms": all_paths.as_millis() as u64,
        "bird_memory_total": total,
        "bird_rss_mib": rss_kib / 1024,
    }))
}

fn main() -> anyhow::Result<()> {
    let mut services = 50_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => {
                services = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=65_000).contains(n))
                    .context("--services takes a number from 1 to 65000")?;
            }
            other => {
                anyhow::bail!("unknown argument {other:?}; usage: bgp-route-cost [--services N]")
            }
        }
    }
    let host = measure(services, false)?;
    let aggregate = measure(services, true)?;
    println!(
        "{}",
        json!({"services": services, "host_routes": host, "aggregate": aggregate})
    );
    Ok(())
}
