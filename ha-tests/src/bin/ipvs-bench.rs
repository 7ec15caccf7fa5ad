//! Full sync of a big table into empty kernel IPVS by lb-node, against
//! `ipvsadm -R` of the same rules, in the same kernel-lab guest, one run;
//! then one backend change applied into that table, and lb-node's peak
//! memory.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p ha-tests --bin ipvs-bench [-- SERVICES [BACKENDS]]
//!
//! Defaults: 50,000 services with 10 backends each (550,000 operations).
//! lb-node programs IPVS only (no VIP interface, no masquerade table), as
//! ipvsadm does; the times are what each reports inside a 2-vCPU TCG guest.

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
    let mut file = String::with_capacity(services as usize * 700);
    for i in 0..services {
        let _ = write!(
            file,
            "[[service]]\nname = \"s{i}\"\nvip = \"10.{}.{}.{}\"\nport = {}\nscheduler = \"{}\"\n",
            100 + i / 60_000,
            (i / 240) % 250,
            i % 240 + 1,
            80 + i % 3,
            if i % 2 == 0 { "rr" } else { "wrr" }
        );
        for b in 0..backends {
            let _ = write!(
                file,
                "  [[service.backend]]\n  address = \"172.{}.{}.{}\"\n  port = 8080\n  weight = {}\n",
                16 + b,
                (i / 250) % 250,
                i % 250 + 1,
                1 + (i + b) % 4
            );
        }
    }
    std::fs::write(dir.path().join("services.toml"), &file)?;
    // The same table with one backend's weight changed (service 0, backend 0).
    let changed = file.replacen("weight = 1\n", "weight = 9\n", 1);
    std::fs::write(dir.path().join("services-changed.toml"), changed)?;
    std::fs::write(
        dir.path().join("member.toml"),
        "[node]\nid = 1\n[dataplane]\nkind = \"ipvs\"\nrepair_interval = \"1h\"\nvip_interface = \"\"\nmasquerade = false\ndrain_timeout = \"0s\"\n[source.file]\npath = \"live.toml\"\ncheck_interval = \"1s\"\n[admin]\nlisten = \"127.0.0.1:9443\"\nmetrics_listen = \"127.0.0.1:9445\"\n",
    )?;
    let ops = services * (backends + 1);
    let script = r#"
cp /lab/services.toml /lab/live.toml
lb-node plan --config /lab/member.toml > /tmp/rules
echo "LAB rules $(wc -l < /tmp/rules)"
lb-node --config /lab/member.toml > /tmp/lb.log 2>&1 &
pid=$!
i=0
while [ $i -lt 6000 ] && ! grep -q "dataplane synced" /tmp/lb.log; do usleep 200000; i=$((i+1)); done
grep "dataplane synced" /tmp/lb.log | head -1 | sed 's/^/LAB full+ /'
echo "LAB kernel-lines $(ipvsadm -Sn | wc -l)"
cp /lab/services-changed.toml /lab/live.toml
i=0
while [ $i -lt 600 ] && [ "$(grep -c 'dataplane synced' /tmp/lb.log)" -lt 2 ]; do usleep 200000; i=$((i+1)); done
grep "dataplane synced" /tmp/lb.log | sed -n 2p | sed 's/^/LAB change+ /'
echo "LAB peak-kib $(grep VmHWM /proc/$pid/status | awk '{print $2}')"
echo "LAB rss-kib $(grep VmRSS /proc/$pid/status | awk '{print $2}')"
kill $pid
wait $pid 2>/dev/null
ipvsadm -C
start=$(cut -d' ' -f1 /proc/uptime)
ipvsadm -R < /tmp/rules
end=$(cut -d' ' -f1 /proc/uptime)
echo "LAB ipvsadm-seconds $(awk "BEGIN{print $end-$start}")"
echo "LAB ipvsadm-lines $(ipvsadm -Sn | wc -l)"
"#;
    let lb_node = binary("lb-node")?;
    eprintln!(
        "ipvs-bench: {services} services x {backends} backends = {ops} operations; booting the lab"
    );
    let run = lab.run(
        script,
        &[
            ("/usr/local/bin/lb-node", &lb_node),
            ("/lab/services.toml", &dir.path().join("services.toml")),
            (
                "/lab/services-changed.toml",
                &dir.path().join("services-changed.toml"),
            ),
            ("/lab/member.toml", &dir.path().join("member.toml")),
        ],
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
    let (Some(full_ms), Some(change_ms), Some(ipvsadm_s)) = (
        field(&full, "took_ms"),
        field(&change, "took_ms"),
        run.get("ipvsadm-seconds")
            .and_then(|v| v.parse::<f64>().ok()),
    ) else {
        anyhow::bail!(
            "the run did not report its figures:\n{}\n{}",
            run.results.join("\n"),
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
        run.get("ipvsadm-lines").unwrap_or("?")
    );
    println!(
        "  lb-node full sync into an empty table: {:.1} s ({} failed)",
        full_ms / 1000.0,
        field(&full, "failed").unwrap_or(-1.0)
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
    let mib = |k: &str| run.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024;
    println!(
        "  lb-node peak memory (VmHWM):           {} MiB",
        mib("peak-kib")
    );
    println!(
        "  lb-node memory after both syncs (RSS): {} MiB",
        mib("rss-kib")
    );
    Ok(())
}
