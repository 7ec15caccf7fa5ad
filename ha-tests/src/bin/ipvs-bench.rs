//! Full sync of a big table into empty kernel IPVS by lb-node, against
//! `ipvsadm -R` of the same rules, each in a fresh kernel-lab guest of its
//! own; then, in lb-node's guest, one backend change and one service added
//! on a new VIP, and lb-node's peak memory. One JSON line at the end.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p ha-tests --bin ipvs-bench [-- SERVICES [BACKENDS]]
//!
//! Defaults: 50,000 services with 10 backends each (550,000 operations).
//! lb-node runs with the default member configuration (VIP interface,
//! masquerade table, drain, repair every 30 s); `ipvsadm -R` gets the rules
//! `lb-node plan` prints. Each side has a fresh kernel: right after an
//! `ipvsadm -C` the kernel still holds the deleted destinations on a list
//! it scans at every add, for about two minutes, which slowed the
//! reference several-fold in an earlier version of this benchmark.
//! The times are what each reports inside a 2-vCPU TCG guest.

use std::fmt::Write as _;
use std::time::Duration;

use ha_tests::binary;
use ha_tests::kernel_lab::{KernelLab, tail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let services: u32 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000);
    let backends: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let lab = KernelLab::find()?;
    let dir = tempfile::tempdir()?;
    let mut file = String::with_capacity(services as usize * 400);
    // Compact TOML (inline backends with the service's port and weight 1,
    // the default scheduler) so that 50,000 x 10 fits the 16 MiB a
    // services file may have.
    for i in 0..services {
        let _ = write!(
            file,
            "[[service]]\nname=\"s{i}\"\nvip=\"10.{}.{}.{}\"\nport={}\nbackend=[",
            100 + i / 60_000,
            (i / 240) % 250,
            i % 240 + 1,
            80 + i % 3,
        );
        for b in 0..backends {
            let _ = write!(
                file,
                "{}{{address=\"172.{}.{}.{}\"}}",
                if b == 0 { "" } else { "," },
                16 + b,
                (i / 250) % 250,
                i % 250 + 1,
            );
        }
        file.push_str("]\n");
    }
    std::fs::write(dir.path().join("services.toml"), &file)?;
    // The same table with one backend's weight changed (service 0, backend 0).
    let changed = file.replacen("}", ",weight=9}", 1);
    std::fs::write(dir.path().join("services-changed.toml"), &changed)?;
    // And then one more service, on a VIP of its own.
    let added = changed
        + "[[service]]\nname=\"added\"\nvip=\"10.250.0.1\"\nport=80\nscheduler=\"rr\"\nbackend=[{address=\"172.31.0.1\"}]\n";
    std::fs::write(dir.path().join("services-added.toml"), added)?;
    std::fs::write(
        dir.path().join("member.toml"),
        "[node]\nid = 1\n[dataplane]\nkind = \"ipvs\"\n[source.file]\npath = \"live.toml\"\ncheck_interval = \"1s\"\n[admin]\nlisten = \"127.0.0.1:9443\"\nmetrics_listen = \"127.0.0.1:9445\"\n",
    )?;
    let ops = services * (backends + 1);
    // The rules, as the member would program them (no kernel needed).
    let lb_node = binary("lb-node")?;
    std::fs::copy(
        dir.path().join("services.toml"),
        dir.path().join("live.toml"),
    )?;
    let plan = std::process::Command::new(&lb_node)
        .args(["plan", "--config"])
        .arg(dir.path().join("member.toml"))
        .output()?;
    anyhow::ensure!(
        plan.status.success(),
        "lb-node plan: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    std::fs::write(dir.path().join("rules"), &plan.stdout)?;
    // Debugging: the host's RUST_LOG reaches the member.
    let log = std::env::var("RUST_LOG")
        .map(|l| format!("export RUST_LOG='{l}'\n"))
        .unwrap_or_default();
    let script = log
        + r#"
cp /lab/services.toml /lab/live.toml
echo "LAB rules $(wc -l < /lab/rules)"
lb-node --config /lab/member.toml > /tmp/lb.log 2>&1 &
pid=$!
# synced N: waits for the Nth "dataplane synced" line.
synced() {
  i=0
  while [ $i -lt 6000 ] && [ "$(grep -c 'dataplane synced' /tmp/lb.log)" -lt $1 ]; do usleep 100000; i=$((i+1)); done
}
synced 1
grep "dataplane synced" /tmp/lb.log | sed -n 1p | sed 's/^/LAB full+ /'
# lb-node's CPU so far (start, the file, the sync), user and system, in
# clock ticks: the kernel's work on each IPVS request runs in lb-node's
# own send call, so system time bounds what any client could save.
echo "LAB cpu-ticks $(cut -d' ' -f14,15 /proc/$pid/stat)"
echo "LAB kernel-lines $(ipvsadm -Sn | wc -l)"
echo "LAB vips-local $(ip route show table 27746 | grep -c '^local')"
cp /lab/services-changed.toml /lab/live.toml
synced 2
grep "dataplane synced" /tmp/lb.log | sed -n 2p | sed 's/^/LAB change+ /'
cp /lab/services-added.toml /lab/live.toml
synced 3
grep "dataplane synced" /tmp/lb.log | sed -n 3p | sed 's/^/LAB added+ /'
echo "LAB added-local $(ip route show table 27746 | grep -c 'local 10.250.0.1 ')"
echo "LAB added-masq $(nft list set inet lb_node masq4 | grep -c 10.250.0.1)"
echo "LAB peak-kib $(grep VmHWM /proc/$pid/status | awk '{print $2}')"
echo "LAB rss-kib $(grep VmRSS /proc/$pid/status | awk '{print $2}')"
grep -i "warn\|error" /tmp/lb.log | head -5 | sed 's/^/LAB log+ /'
if [ -n "$RUST_LOG" ]; then grep -E "converged|IPVS operations|dataplane synced" /tmp/lb.log | tail -9 | sed "s/^/LAB log+ /"; fi
kill $pid
"#;
    let reference = r#"
start=$(cut -d' ' -f1 /proc/uptime)
ipvsadm -R < /lab/rules
end=$(cut -d' ' -f1 /proc/uptime)
echo "LAB ipvsadm-seconds $(awk "BEGIN{print $end-$start}")"
echo "LAB ipvsadm-lines $(ipvsadm -Sn | wc -l)"
"#;
    eprintln!(
        "ipvs-bench: {services} services x {backends} backends = {ops} operations; booting the lab"
    );
    let rules = dir.path().join("rules");
    let run = lab.run(
        &script,
        &[
            ("/usr/local/bin/lb-node", &lb_node),
            ("/lab/services.toml", &dir.path().join("services.toml")),
            (
                "/lab/services-changed.toml",
                &dir.path().join("services-changed.toml"),
            ),
            (
                "/lab/services-added.toml",
                &dir.path().join("services-added.toml"),
            ),
            ("/lab/member.toml", &dir.path().join("member.toml")),
            ("/lab/rules", &rules),
        ],
        6144,
        Duration::from_secs(3600),
    )?;
    eprintln!("ipvs-bench: lb-node's guest done; ipvsadm -R in a fresh one");
    let reference = lab.run(
        reference,
        &[("/lab/rules", &rules)],
        6144,
        Duration::from_secs(3600),
    )?;
    let field = |line: &str, key: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
    };
    let full = run.block("full").first().copied().unwrap_or("").to_owned();
    let change = run
        .block("change")
        .first()
        .copied()
        .unwrap_or("")
        .to_owned();
    let added = run.block("added").first().copied().unwrap_or("").to_owned();
    let (Some(full_ms), Some(change_ms), Some(added_ms), Some(ipvsadm_s)) = (
        field(&full, "took_ms"),
        field(&change, "took_ms"),
        field(&added, "took_ms"),
        reference
            .get("ipvsadm-seconds")
            .and_then(|v| v.parse::<f64>().ok()),
    ) else {
        anyhow::bail!(
            "the run did not report its figures:\n{}\n{}\n{}",
            run.results.join("\n"),
            reference.results.join("\n"),
            tail(&run.console, 40)
        );
    };
    println!(
        "kernel lab (Debian {} under qemu TCG, 2 vCPUs), {services} services x {backends} backends = {ops} operations",
        lab.release
    );
    println!(
        "  rules: {} lines; kernel after lb-node: {} lines; after ipvsadm -R: {} lines",
        run.get("rules").unwrap_or("?"),
        run.get("kernel-lines").unwrap_or("?"),
        reference.get("ipvsadm-lines").unwrap_or("?")
    );
    println!(
        "  lb-node full sync into an empty table: {:.1} s ({} services refused)",
        full_ms / 1000.0,
        field(&full, "refused_services").unwrap_or(-1.0)
    );
    println!("  ipvsadm -R of the same rules:          {ipvsadm_s:.1} s");
    println!(
        "  ratio lb-node / ipvsadm:               {:.2}",
        full_ms / 1000.0 / ipvsadm_s
    );
    println!(
        "  one backend change in that table:      {change_ms:.2} ms (ops {})",
        field(&change, "ops").unwrap_or(-1.0)
    );
    // USER_HZ: 100 ticks a second.
    let cpu: Vec<f64> = run
        .get("cpu-ticks")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|t| t / 100.0)
        .collect();
    let (user_s, system_s) = (cpu.first().copied(), cpu.get(1).copied());
    println!(
        "  lb-node CPU by the end of the full sync: user {} s, system {} s",
        user_s.map_or("?".into(), |u| format!("{u:.1}")),
        system_s.map_or("?".into(), |u| format!("{u:.1}")),
    );
    let mib = |k: &str| run.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024;
    println!(
        "  one service added on a new VIP:        {added_ms:.2} ms (ops {}; local by a route: {}, in the masquerade set: {})",
        field(&added, "ops").unwrap_or(-1.0),
        run.get("added-local").unwrap_or("?"),
        run.get("added-masq").unwrap_or("?"),
    );
    println!(
        "  lb-node peak memory (VmHWM):           {} MiB",
        mib("peak-kib")
    );
    println!(
        "  lb-node memory after the syncs (RSS):  {} MiB",
        mib("rss-kib")
    );
    for l in run.block("log") {
        println!("  lb-node said: {l}");
    }
    println!(
        "{}",
        serde_json::json!({
            "services": services,
            "backends": backends,
            "lb_node_full_sync_s": full_ms / 1000.0,
            "ipvsadm_restore_s": ipvsadm_s,
            "ratio": full_ms / 1000.0 / ipvsadm_s,
            "one_change_ms": change_ms,
            "new_vip_service_ms": added_ms,
            "vips_local": run.get("vips-local"),
            "peak_mib": mib("peak-kib"),
            "cpu_user_s": user_s,
            "cpu_system_s": system_s,
        })
    );
    Ok(())
}
