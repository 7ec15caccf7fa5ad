//! Full sync of a big table into empty kernel IPVS by lb-node, against
//! `ipvsadm -R` of the same rules, each in a fresh kernel-lab guest of its
//! own; then, in lb-node's guest, one backend change and ten services added
//! one at a time, each on a new VIP, and lb-node's peak memory. One JSON
//! line at the end. `IPVS_BENCH_RATE_ESTIMATION=kernel|on|off`: the member's
//! `dataplane.rate_estimation`, and the same kernel setting in the
//! reference's guest; `IPVS_BENCH_REFERENCE=0` skips `ipvsadm -R`,
//! `IPVS_BENCH_ONLY_REFERENCE=1` runs it alone (with its user and system
//! CPU: the system part is the kernel's own work, a floor for any client).
//! To tell where a slow change's time went: `IPVS_BENCH_STALL_WATCH=1`,
//! `IPVS_BENCH_FTRACE=1`, `IPVS_BENCH_THP=never` (below).
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

/// Services added one at a time, each on a new VIP, after the full sync.
const ADDED: u32 = 10;
/// Weight changes after the adds, each of another service.
const WEIGHTS: u32 = 5;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let services: u32 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000);
    let backends: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let lab = KernelLab::find()?;
    // The kernel's rate estimators (`net.ipv4.vs.run_estimation`):
    // `IPVS_BENCH_RATE_ESTIMATION=kernel|on|off` is the member's
    // `dataplane.rate_estimation` (default: as the kernel has it); the
    // reference guest gets the same kernel setting, so that both sides
    // run on the same kernel work.
    let rates = std::env::var("IPVS_BENCH_RATE_ESTIMATION").unwrap_or_else(|_| "kernel".into());
    anyhow::ensure!(
        ["kernel", "on", "off"].contains(&rates.as_str()),
        "IPVS_BENCH_RATE_ESTIMATION={rates}: kernel, on or off"
    );
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
        // Backend b of service i: unique among the services' bth backends
        // up to 62,500 services per block of second octets (the weight
        // changes below edit one service each by its first backend).
        for b in 0..backends {
            let _ = write!(
                file,
                "{}{{address=\"172.{}.{}.{}\"}}",
                if b == 0 { "" } else { "," },
                16 + b + backends * (i / 62_500),
                (i / 250) % 250,
                i % 250 + 1,
            );
        }
        file.push_str("]\n");
    }
    std::fs::write(dir.path().join("services.toml"), &file)?;
    // The member reads files up to 16 MiB by default; bigger ones (100,000
    // x 10 is 30 MiB) with the limit raised (`source.file.max_size_mib`,
    // with room for the edits below) and the memory that takes.
    let file_mib = file.len() as u64 >> 20;
    let max_size = format!("max_size_mib = {}\n", (file_mib + 2).max(16));
    // The guests' memory: 6 GiB did for 50,000 x 10 (the member peaked at
    // 3.1-4.4 GiB); more, in proportion, for bigger tables.
    let guest_mib =
        6144 * services.div_ceil(50_000).max(1) + if services > 50_000 { 2048 } else { 0 };
    // The same table with one backend's weight changed (service 0, backend 0).
    let changed = file.replacen("}", ",weight=9}", 1);
    std::fs::write(dir.path().join("services-changed.toml"), &changed)?;
    // And then more services, one at a time, each on a VIP of its own:
    // ADDED of them, for the spread of one add.
    let mut added = changed;
    for k in 1..=ADDED {
        let _ = write!(
            added,
            "[[service]]\nname=\"added{k}\"\nvip=\"10.250.0.{k}\"\nport=80\nscheduler=\"rr\"\nbackend=[{{address=\"172.31.0.{k}\"}}]\n"
        );
        std::fs::write(dir.path().join(format!("services-added-{k}.toml")), &added)?;
    }
    std::fs::write(
        dir.path().join("member.toml"),
        format!(
            "[node]\nid = 1\n[dataplane]\nkind = \"ipvs\"\nrate_estimation = \"{rates}\"\n[source.file]\npath = \"live.toml\"\ncheck_interval = \"1s\"\n{max_size}[admin]\nlisten = \"127.0.0.1:9443\"\nmetrics_listen = \"127.0.0.1:9445\"\n"
        ),
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
    // And GLIBC_TUNABLES, to try the allocator's settings.
    let log = log
        + &std::env::var("GLIBC_TUNABLES")
            .map(|t| format!("export GLIBC_TUNABLES='{t}'\n"))
            .unwrap_or_default();
    let estimation = format!(
        r#"case "{rates}" in
  on) sysctl -qw net.ipv4.vs.run_estimation=1 ;;
  off) sysctl -qw net.ipv4.vs.run_estimation=0 ;;
esac
echo "LAB run-estimation $(cat /proc/sys/net/ipv4/vs/run_estimation)"
"#
    );
    // `IPVS_BENCH_STALL_WATCH=1`: two stall watches in the guest (one at
    // normal priority, one real-time) and the kernel's reclaim and
    // compaction counters around each change, to tell what holds up a slow
    // change: the whole guest stopping (both watches stall), CPU contention
    // (only the normal one), or the kernel's memory work (the counters).
    let watch = std::env::var("IPVS_BENCH_STALL_WATCH").is_ok_and(|v| v == "1");
    // `IPVS_BENCH_FTRACE=1`: after the full sync, the guest kernel's
    // function graph tracer on the IPVS requests, keeping every call in
    // them that took over 5 ms: which kernel function a slow change spends
    // its time in.
    let ftrace = std::env::var("IPVS_BENCH_FTRACE").is_ok_and(|v| v == "1");
    // `IPVS_BENCH_THP=never` (or `madvise`): the guest's transparent huge
    // pages setting for the run (its kernel's default otherwise).
    let thp = match std::env::var("IPVS_BENCH_THP") {
        Ok(mode) if ["always", "madvise", "never"].contains(&mode.as_str()) => {
            format!("echo {mode} > /sys/kernel/mm/transparent_hugepage/enabled\n")
        }
        _ => String::new(),
    };
    let script = log
        + &thp
        + "echo \"LAB thp $(cat /sys/kernel/mm/transparent_hugepage/enabled)\"\n"
        + &format!(
            "ADDED={ADDED}\nWEIGHTS={WEIGHTS}\nWATCH={}\nFTRACE={}\n",
            if watch { "1" } else { "" },
            if ftrace { "1" } else { "" }
        )
        + r#"
if [ -n "$WATCH" ]; then
  stall-watch 20 normal 2>> /tmp/stalls &
  chrt -f 50 stall-watch 20 realtime 2>> /tmp/stalls &
fi
# The kernel's memory work so far (direct reclaim, compaction, faults).
vm() {
  [ -n "$WATCH" ] && echo "LAB vm+ $1 $(date +%s.%N) $(awk '/^(allocstall_normal|allocstall_movable|pgscan_direct|compact_stall|compact_fail|pgmajfault|pgfault|thp_fault_alloc|thp_collapse_alloc) /{printf "%s=%s ", $1, $2}' /proc/vmstat)"
}
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
# The peak so far: the start and the full sync's share of the peak below.
echo "LAB sync-peak-kib $(grep VmHWM /proc/$pid/status | awk '{print $2}')"
grep "IPVS batch applied" /tmp/lb.log | sed -n 1p | sed 's/^/LAB batch+ /'
# The threads that encoded the full sync's requests (one per slice), summed.
echo "LAB encoder $(grep 'requests encoded' /tmp/lb.log | sed -n 's/.*user_s=\([0-9.]*\) system_s=\([0-9.]*\).*/\1 \2/p' | awk '{u+=$1; s+=$2} END {printf "%.3f %.3f", u, s}')"
# lb-node's CPU so far (start, the file, the sync), user and system, in
# clock ticks: the kernel's work on each IPVS request runs in lb-node's
# own send call, so system time bounds what any client could save.
echo "LAB cpu-ticks $(cut -d' ' -f14,15 /proc/$pid/stat)"
echo "LAB kernel-lines $(ipvsadm -Sn | wc -l)"
# What the member set the rate estimators to (`dataplane.rate_estimation`).
echo "LAB run-estimation $(cat /proc/sys/net/ipv4/vs/run_estimation)"
echo "LAB vips-local $(ip route show table 27746 | grep -c '^local')"
if [ -n "$FTRACE" ]; then
  t=/sys/kernel/tracing
  mount -t tracefs nodev $t 2>/dev/null
  # Only these functions are traced (graph tracing of everything under
  # the request stalls the emulated guest into a soft lockup); each one's
  # return is kept when it took over 5 ms.
  for f in ip_vs_genl_set_cmd ip_vs_add_service ip_vs_add_dest ip_vs_edit_dest \
      ip_vs_new_dest __ip_vs_update_dest ip_vs_start_estimator ip_vs_bind_scheduler \
      pcpu_alloc pcpu_create_chunk pcpu_balance_workfn clear_huge_page \
      do_huge_pmd_anonymous_page synchronize_rcu synchronize_rcu_expedited \
      __do_softirq estimation_timer rcu_core run_timer_softirq net_rx_action \
      genl_rcv_msg netlink_sendmsg netlink_recvmsg nf_tables_commit \
      do_sys_poll khugepaged_scan_mm_slot collapse_huge_page; do
    echo $f >> $t/set_ftrace_filter 2>/dev/null || echo "LAB ftrace+ not traceable: $f"
  done
  echo 5000 > $t/tracing_thresh
  echo 20000 > $t/buffer_size_kb
  echo function_graph > $t/current_tracer || echo "LAB ftrace+ no function_graph tracer"
  echo funcgraph-abstime > $t/trace_options
  echo 1 > $t/tracing_on
fi
vm before-change
cp /lab/services-changed.toml /lab/live.toml
synced 2
vm after-change
grep "dataplane synced" /tmp/lb.log | sed -n 2p | sed 's/^/LAB change+ /'
k=1
while [ $k -le $ADDED ]; do
  vm before-add-$k
  cp /lab/services-added-$k.toml /lab/live.toml
  synced $((k + 2))
  vm after-add-$k
  grep "dataplane synced" /tmp/lb.log | sed -n $((k + 2))p | sed 's/^/LAB added+ /'
  k=$((k + 1))
done
# More weight changes, each of another service's first backend (service k's
# is 172.16.0.(k+1), unique in the file): the first change after the sync
# above runs code the emulator has not translated yet; these show the rest.
k=1
while [ $k -le $WEIGHTS ]; do
  a="172.16.0.$((k + 1))"
  sed "s/{address=\"$a\"}/{address=\"$a\",weight=7}/" /lab/live.toml > /lab/next.toml
  vm before-weight-$k
  mv /lab/next.toml /lab/live.toml
  synced $((k + 2 + ADDED))
  vm after-weight-$k
  grep "dataplane synced" /tmp/lb.log | sed -n $((k + 2 + ADDED))p | sed 's/^/LAB weight+ /'
  k=$((k + 1))
done
echo "LAB added-local $(ip route show table 27746 | grep -c 'local 10.250.0.')"
echo "LAB added-masq $(nft list set inet lb_node masq4 | grep -o '10\.250\.0\.[0-9]*' | wc -l)"
metric() { wget -q -O - http://127.0.0.1:9445/metrics | awk -v m="$1" '$1==m{print $2}'; }
echo "LAB repair-rounds $(metric lb_dataplane_repair_rounds_total)"
echo "LAB repair-round-seconds $(metric lb_dataplane_repair_round_seconds)"
echo "LAB whole-dumps $(metric lb_dataplane_dumps_total)"
echo "LAB peak-kib $(grep VmHWM /proc/$pid/status | awk '{print $2}')"
echo "LAB rss-kib $(grep VmRSS /proc/$pid/status | awk '{print $2}')"
grep -i "warn\|error" /tmp/lb.log | head -5 | sed 's/^/LAB log+ /'
# With RUST_LOG: where the full sync and each change after it spent
# their time (from the member's start).
if [ -n "$RUST_LOG" ]; then grep -E "lb-node starting|converged|IPVS operations|IPVS batch|applied and recorded|dataplane synced|change planned|repair|programmed the table" /tmp/lb.log | head -300 | sed "s/^/LAB log+ /"; fi
[ -n "$WATCH" ] && sed 's/^/LAB stall+ /' /tmp/stalls | tail -400
if [ -n "$FTRACE" ]; then
  echo 0 > /sys/kernel/tracing/tracing_on
  grep -v '^#' /sys/kernel/tracing/trace | tail -300 | sed 's/^/LAB ftrace+ /'
fi
kill $pid
"#;
    let reference = estimation.clone()
        + r#"
start=$(cut -d' ' -f1 /proc/uptime)
# The inner shell's children's CPU (fields 16 and 17, after the wait):
# ipvsadm's user and system time, the system part being the kernel's own
# work on the requests, which any client of this kernel pays.
sh -c 'ipvsadm -R < /lab/rules; echo "LAB ipvsadm-cpu-ticks $(cut -d" " -f16,17 /proc/$$/stat)"'
end=$(cut -d' ' -f1 /proc/uptime)
echo "LAB ipvsadm-seconds $(awk "BEGIN{print $end-$start}")"
echo "LAB ipvsadm-lines $(ipvsadm -Sn | wc -l)"
"#;
    eprintln!(
        "ipvs-bench: {services} services x {backends} backends = {ops} operations; booting the lab"
    );
    let rules = dir.path().join("rules");
    let added_files: Vec<(String, std::path::PathBuf)> = (1..=ADDED)
        .map(|k| {
            (
                format!("/lab/services-added-{k}.toml"),
                dir.path().join(format!("services-added-{k}.toml")),
            )
        })
        .collect();
    let mut files: Vec<(&str, &std::path::Path)> = added_files
        .iter()
        .map(|(g, h)| (g.as_str(), h.as_path()))
        .collect();
    let (services_file, changed_file, member_file) = (
        dir.path().join("services.toml"),
        dir.path().join("services-changed.toml"),
        dir.path().join("member.toml"),
    );
    files.extend([
        ("/usr/local/bin/lb-node", lb_node.as_path()),
        ("/lab/services.toml", services_file.as_path()),
        ("/lab/services-changed.toml", changed_file.as_path()),
        ("/lab/member.toml", member_file.as_path()),
        ("/lab/rules", rules.as_path()),
    ]);
    let (stall_watch, chrt) = (
        binary("stall-watch")?,
        std::path::Path::new("/usr/bin/chrt"),
    );
    if watch {
        files.extend([
            ("/usr/local/bin/stall-watch", stall_watch.as_path()),
            ("/usr/bin/chrt", chrt),
        ]);
    }
    // `IPVS_BENCH_ONLY_REFERENCE=1`: the reference alone, with its CPU.
    if std::env::var("IPVS_BENCH_ONLY_REFERENCE").is_ok_and(|v| v == "1") {
        let reference = lab.run(
            &reference,
            &[("/lab/rules", &rules)],
            guest_mib,
            Duration::from_secs(3600),
        )?;
        let (wall, cpu) = (
            reference.get("ipvsadm-seconds").unwrap_or("?"),
            reference.get("ipvsadm-cpu-ticks").unwrap_or("?"),
        );
        println!(
            "ipvsadm -R of {ops} operations in a fresh guest: {wall} s; its CPU user and system, ticks of 10 ms: {cpu}"
        );
        let ticks: Vec<f64> = cpu
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "services": services,
                "backends": backends,
                "ipvsadm_restore_s": wall.parse::<f64>().ok(),
                "ipvsadm_user_s": ticks.first().map(|t| t / 100.0),
                "ipvsadm_system_s": ticks.get(1).map(|t| t / 100.0),
            })
        );
        return Ok(());
    }
    let host_before = host_cpu();
    let run = lab.run(&script, &files, guest_mib, Duration::from_secs(3600))?;
    let run_steal = steal_percent(host_before, host_cpu());
    let mut reference_steal = None;
    // `IPVS_BENCH_REFERENCE=0` skips the reference (lb-node's figures
    // only; the ratio is then not computed).
    let reference = if std::env::var("IPVS_BENCH_REFERENCE").is_ok_and(|v| v == "0") {
        ha_tests::kernel_lab::GuestRun::default()
    } else {
        eprintln!("ipvs-bench: lb-node's guest done; ipvsadm -R in a fresh one");
        let before = host_cpu();
        let r = lab.run(
            &reference,
            &[("/lab/rules", &rules)],
            guest_mib,
            Duration::from_secs(3600),
        )?;
        reference_steal = steal_percent(before, host_cpu());
        r
    };
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
    let added = run.block("added");
    // The first weight change, then the later ones.
    let weights: Vec<f64> = std::iter::once(change.as_str())
        .chain(run.block("weight").iter().copied())
        .filter_map(|l| field(l, "took_ms"))
        .collect();
    // The thread that sent the full sync's IPVS requests: its system time
    // is the kernel's own work on them.
    let batch = run.block("batch").first().copied().unwrap_or("").to_owned();
    let (batch_user_s, batch_system_s) = (
        field(&batch, "thread_user_s"),
        field(&batch, "thread_system_s"),
    );
    // The threads that encoded them (user, system), summed.
    let encoder: Vec<f64> = run
        .get("encoder")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // In the order they were added, and sorted.
    let added_in_order: Vec<f64> = added.iter().filter_map(|l| field(l, "took_ms")).collect();
    let added_ops: Vec<f64> = added.iter().filter_map(|l| field(l, "ops")).collect();
    // From the change's proposal to its sync's end: what waiting behind a
    // repair or a dump adds (the file's parse before it is not counted).
    let added_since: Vec<f64> = added
        .iter()
        .filter_map(|l| field(l, "since_change_ms"))
        .collect();
    let mut added_ms = added_in_order.clone();
    added_ms.sort_by(f64::total_cmp);
    let (Some(full_ms), Some(change_ms), true, Some(ipvsadm_s)) = (
        field(&full, "took_ms"),
        field(&change, "took_ms"),
        added_ms.len() == ADDED as usize,
        reference
            .get("ipvsadm-seconds")
            .and_then(|v| v.parse::<f64>().ok())
            .or(reference.results.is_empty().then_some(f64::NAN)),
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
    println!("  the same and {WEIGHTS} more (other services, after the adds): {weights:?} ms");
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
    println!(
        "  of which the IPVS requests' thread:    user {} s, system {} s (the kernel's own work on them)",
        batch_user_s.map_or("?".into(), |u| format!("{u:.1}")),
        batch_system_s.map_or("?".into(), |u| format!("{u:.1}")),
    );
    println!(
        "  and the threads that encoded them:     user {} s, system {} s",
        encoder.first().map_or("?".into(), |u| format!("{u:.1}")),
        encoder.get(1).map_or("?".into(), |u| format!("{u:.1}")),
    );
    let mib = |k: &str| run.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024;
    let (min, median, max) = (
        added_ms[0],
        added_ms[added_ms.len() / 2],
        added_ms[added_ms.len() - 1],
    );
    println!(
        "  one service added on a new VIP, {ADDED} times: {min:.2} / {median:.2} / {max:.2} ms min / median / max (ops {added_ops:?}; local by a route: {}, in the masquerade set: {})",
        run.get("added-local").unwrap_or("?"),
        run.get("added-masq").unwrap_or("?"),
    );
    let spread = |v: &[f64]| -> String {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        match (v.first(), v.get(v.len() / 2), v.last()) {
            (Some(a), Some(b), Some(c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
            _ => "?".into(),
        }
    };
    println!(
        "  the same, from the change's proposal:  {} ms min / median / max (in order: {added_since:?})",
        spread(&added_since)
    );
    println!(
        "  repairs (a slice at a time):           {} rounds, the last {} s; whole-table dumps {}",
        run.get("repair-rounds").unwrap_or("?"),
        run.get("repair-round-seconds").unwrap_or("?"),
        run.get("whole-dumps").unwrap_or("?"),
    );
    // This machine is itself a virtual machine: the time its hypervisor
    // gave to others (steal) slows the emulated guest down with it.
    let percent = |p: Option<f64>| p.map_or("?".into(), |p| format!("{p:.0}%"));
    println!(
        "  host CPU stolen by its hypervisor:     {} during lb-node's guest, {} during ipvsadm's",
        percent(run_steal),
        percent(reference_steal)
    );
    println!(
        "  lb-node peak memory (VmHWM):           {} MiB ({} MiB when the full sync ended)",
        mib("peak-kib"),
        mib("sync-peak-kib")
    );
    println!(
        "  lb-node memory after the syncs (RSS):  {} MiB",
        mib("rss-kib")
    );
    println!(
        "  the guest's transparent huge pages:    {}",
        run.get("thp").unwrap_or("?")
    );
    for l in run.block("log") {
        println!("  lb-node said: {l}");
    }
    for l in run
        .block("vm")
        .iter()
        .chain(run.block("stall").iter())
        .chain(run.block("ftrace").iter())
    {
        println!("  guest: {l}");
    }
    println!(
        "{}",
        serde_json::json!({
            "services": services,
            "backends": backends,
            "guest_mib": guest_mib,
            "services_file_mib": file_mib,
            "lb_node_full_sync_s": full_ms / 1000.0,
            "ipvsadm_restore_s": ipvsadm_s,
            "ipvsadm_cpu_ticks": reference.get("ipvsadm-cpu-ticks"),
            "ratio": full_ms / 1000.0 / ipvsadm_s,
            "one_change_ms": change_ms,
            "weight_changes_ms": weights,
            "new_vip_service_ms": added_in_order,
            "new_vip_service_ms_median": median,
            "new_vip_since_proposal_ms": added_since,
            "repair_rounds": run.get("repair-rounds").and_then(|v| v.parse::<f64>().ok()),
            "repair_round_s": run.get("repair-round-seconds").and_then(|v| v.parse::<f64>().ok()),
            "rate_estimation": rates,
            "run_estimation_lb_node_guest": run.get("run-estimation"),
            "run_estimation_ipvsadm_guest": reference.get("run-estimation"),
            "vips_local": run.get("vips-local"),
            "peak_mib": mib("peak-kib"),
            "peak_at_full_sync_mib": mib("sync-peak-kib"),
            "cpu_user_s": user_s,
            "cpu_system_s": system_s,
            "ipvs_thread_user_s": batch_user_s,
            "ipvs_thread_system_s": batch_system_s,
            "encoder_threads_user_s": encoder.first(),
            "encoder_threads_system_s": encoder.get(1),
            "host_steal_percent_lb_node": run_steal,
            "host_steal_percent_ipvsadm": reference_steal,
        })
    );
    Ok(())
}

/// The host's CPU time so far (USER_HZ ticks): stolen by the hypervisor,
/// and in all (the first line of /proc/stat).
fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    Some((*ticks.get(7)?, ticks.iter().take(8).sum()))
}

/// The share of the host's CPU time stolen between two readings.
fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    (t1 > t0).then(|| (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64)
}
