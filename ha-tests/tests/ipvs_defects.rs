//! Issue 20's IPVS defects, each checked in the kernel lab (Debian's kernel
//! under qemu) against the real `ipvsadm`, in one guest:
//!
//! - a configuration that leaves lb-node no way to recognise its own
//!   services (`vip_interface = ""`, no `managed_networks`) is refused with
//!   the field named, exit status 2;
//! - firewall-mark services are recognised after a restart: one removed
//!   from the file while the member was down is deleted, one changed is
//!   updated, both at the first sync (not left forever, not at the first
//!   repair 30 s later);
//! - a UDP backend removed from its service is deleted at once, even with
//!   a live UDP flow (IPVS counts it as an inactive connection that never
//!   ends, so the TCP drain only blackholed it for `drain_timeout`);
//! - a tunnel service with IPv4 and IPv6 backends is listed by `lb-node
//!   plan` in `ipvsadm -Sn`'s order (the documented diff is exact);
//! - a service the kernel refuses (a scheduler it lacks) in a 1,000 x 10
//!   table is retried on its own with backoff: one whole-table dump in
//!   10 s, not one a second.

use std::fmt::Write as _;
use std::time::Duration;

use ha_tests::binary;
use ha_tests::kernel_lab::{KernelLab, tail};

fn config(services: &str, dataplane: &str) -> String {
    format!(
        "[node]\nid = 1\n[dataplane]\nkind = \"ipvs\"\n{dataplane}\n[source.file]\npath = \"{services}\"\ncheck_interval = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:9443\"\nmetrics_listen = \"127.0.0.1:9445\"\n"
    )
}

fn backend(s: &mut String, address: &str, port: u16, weight: u32) {
    let _ = write!(
        s,
        "  [[service.backend]]\n  address = \"{address}\"\n  port = {port}\n  weight = {weight}\n"
    );
}

/// Two firewall-mark services (marks 100 and 200) and an address one;
/// `after`: mark 100's is gone and mark 200's has another scheduler and
/// weights. Plus a UDP service over two backends (one gone `after`).
fn services(after: bool) -> String {
    let mut s = String::new();
    if !after {
        s += "[[service]]\nname = \"fw100\"\nvip = \"10.0.0.100\"\nport = 80\nscheduler = \"rr\"\nfwmark = 100\n";
        backend(&mut s, "10.0.2.11", 80, 1);
        backend(&mut s, "10.0.2.12", 80, 1);
    }
    let (scheduler, weight) = if after { ("wrr", 5) } else { ("rr", 1) };
    let _ = write!(
        s,
        "[[service]]\nname = \"fw200\"\nvip = \"10.0.0.101\"\nport = 443\nscheduler = \"{scheduler}\"\nfwmark = 200\n"
    );
    backend(&mut s, "10.0.2.11", 443, weight);
    backend(&mut s, "10.0.2.12", 443, 1);
    s += "[[service]]\nname = \"web\"\nvip = \"10.0.0.102\"\nport = 80\nscheduler = \"rr\"\n";
    backend(&mut s, "10.0.2.11", 80, 1);
    // Tunnel to backends of both families: ipvsadm lists the IPv6 one
    // first here (its comparison wraps), and the plan must too.
    s += "[[service]]\nname = \"tun\"\nvip = \"10.0.0.103\"\nport = 80\nscheduler = \"rr\"\nforwarding = \"tunnel\"\n";
    backend(&mut s, "10.0.2.11", 80, 1);
    backend(&mut s, "10.0.2.12", 80, 1);
    backend(&mut s, "fd00:2::11", 80, 1);
    s += "[[service]]\nname = \"dns\"\nvip = \"10.0.0.110\"\nport = 53\nprotocol = \"udp\"\nscheduler = \"rr\"\n";
    if !after {
        backend(&mut s, "10.0.2.11", 53, 1);
    }
    backend(&mut s, "10.0.2.12", 53, 1);
    s
}

/// 1,000 services x 10 backends, and one with a scheduler Debian's kernel
/// does not build.
fn big_table() -> String {
    let mut s = String::new();
    for i in 0..1000u32 {
        let _ = write!(
            s,
            "[[service]]\nname = \"s{i}\"\nvip = \"10.100.{}.{}\"\nport = 80\nscheduler = \"rr\"\n",
            i / 250,
            i % 250 + 1
        );
        for b in 0..10u32 {
            backend(
                &mut s,
                &format!("10.{}.{}.{}", 200 + b, i / 250, i % 250 + 1),
                8080,
                1,
            );
        }
    }
    s += "[[service]]\nname = \"refused\"\nvip = \"10.101.0.1\"\nport = 80\nscheduler = \"twos\"\n";
    backend(&mut s, "10.0.2.11", 80, 1);
    // A second one in the middle of the table (between 10.100.1.250 and
    // 10.100.2.1), so one refusal answers in the middle of a `send` of
    // many requests, where only failures are answered: it must be pinned
    // on this service and no other.
    s += "[[service]]\nname = \"refused-mid\"\nvip = \"10.100.2.0\"\nport = 80\nscheduler = \"twos\"\n";
    backend(&mut s, "10.0.2.12", 80, 1);
    s
}

const SCRIPT: &str = r#"
# equal_within NAME SECONDS: polls until ipvsadm -Sn equals /tmp/plan;
# reports NAME-equal and NAME-seconds.
equal_within() {
  start=$(cut -d' ' -f1 /proc/uptime)
  i=0
  while [ $i -lt $(($2 * 10)) ]; do
    ipvsadm -Sn > /tmp/kernel
    if diff /tmp/plan /tmp/kernel > /tmp/diff 2>&1; then
      echo "LAB $1-equal yes"
      echo "LAB $1-seconds $(awk "BEGIN{print $(cut -d' ' -f1 /proc/uptime)-$start}")"
      return 0
    fi
    usleep 100000
    i=$((i+1))
  done
  echo "LAB $1-equal no"
  sed "s/^/LAB $1-diff+ /" /tmp/diff | head -30
}

# A configuration lb-node could never clean up after: refused.
lb-node --config /lab/bare.toml > /tmp/bare.log 2>&1
echo "LAB bare-exit $?"
sed 's/^/LAB bare+ /' /tmp/bare.log | head -5

# Backends and a client, as in ipvs_lab.rs.
ip link add br0 type bridge
ip addr add 10.0.2.1/24 dev br0
ip link set br0 up
for n in 1 2; do
  ip netns add b$n
  ip link add vb$n type veth peer name eth0 netns b$n
  ip link set vb$n master br0 up
  ip -n b$n addr add 10.0.2.1$n/24 dev eth0
  ip -n b$n link set eth0 up
done
ip netns add c
ip link add vc type veth peer name eth0 netns c
ip addr add 10.0.1.1/24 dev vc
ip link set vc up
ip -n c addr add 10.0.1.2/24 dev eth0
ip -n c link set eth0 up
ip -n c route add default via 10.0.1.1

# Firewall-mark services across a restart.
cp /lab/before.toml /lab/live.toml
lb-node --config /lab/member.toml > /tmp/lb1.log 2>&1 &
pid=$!
i=0
while [ $i -lt 300 ] && [ "$(ipvsadm -Sn | grep -c '^-A -f')" -lt 2 ]; do usleep 100000; i=$((i+1)); done
echo "LAB fwmarks-before $(ipvsadm -Sn | grep -c '^-A -f')"
kill -9 $pid
wait $pid 2>/dev/null
cp /lab/after.toml /lab/live.toml
lb-node plan --config /lab/member.toml > /tmp/plan
lb-node --config /lab/member.toml > /tmp/lb2.log 2>&1 &
pid=$!
equal_within restarted 10
echo "LAB fwmark-100-left $(ipvsadm -Sn | grep -c '^-A -f 100')"
nft -n list chain inet lb_node prerouting | grep 'mark set' | sed 's/^/LAB marks+ /'

# A UDP flow to each backend of the UDP service, then one backend removed
# from the file.
cp /lab/after.toml /lab/live.toml
cp /lab/before.toml /lab/live.toml
i=0
while [ $i -lt 100 ] && [ "$(ipvsadm -Ln -u 10.0.0.110:53 | grep -c 10.0.2.1)" -lt 2 ]; do usleep 100000; i=$((i+1)); done
inns c lab-http udp 10.0.0.110:53 4 2>&1 | sed 's/^/LAB udp-error+ /'
sleep 1
ipvsadm -Ln -u 10.0.0.110:53 | sed 's/^/LAB udp-before+ /'
echo "LAB udp-flows $(ipvsadm -Lnc | grep -c 10.0.0.110:53)"
cp /lab/after.toml /lab/live.toml
start=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ $i -lt 100 ] && ipvsadm -Ln -u 10.0.0.110:53 | grep -q 10.0.2.11; do usleep 100000; i=$((i+1)); done
echo "LAB udp-removed-seconds $(awk "BEGIN{print $(cut -d' ' -f1 /proc/uptime)-$start}")"
echo "LAB udp-b1-left $(ipvsadm -Ln -u 10.0.0.110:53 | grep -c 10.0.2.11)"
ipvsadm -Ln -u 10.0.0.110:53 | sed 's/^/LAB udp-after+ /'
kill $pid
wait $pid 2>/dev/null

# A refused service in a 1,000 x 10 table.
ipvsadm -C
lb-node --config /lab/big.toml > /tmp/lb3.log 2>&1 &
pid=$!
i=0
while [ $i -lt 1200 ] && [ "$(ipvsadm -Sn | grep -c '^-a')" -lt 10000 ]; do usleep 100000; i=$((i+1)); done
echo "LAB big-destinations $(ipvsadm -Sn | grep -c '^-a')"
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
dumps() { wget -q -O - http://127.0.0.1:9445/metrics | awk '$1=="lb_dataplane_dumps_total"{print $2}'; }
refusals() { grep WARN /tmp/lb3.log | grep -c -e 'tcp/10.101.0.1:80' -e 'tcp/10.100.2.0:80'; }
c0=$(cpu); d0=$(dumps); r0=$(refusals)
sleep 10
echo "LAB big-cpu-ticks $(( $(cpu) - c0 ))"
echo "LAB big-dumps $(( $(dumps) - d0 ))"
echo "LAB big-dumps-total $(dumps)"
echo "LAB big-refusals $(( $(refusals) - r0 ))"
echo "LAB big-refused-in-kernel $(ipvsadm -Sn | grep -c -e 10.101.0.1 -e '10.100.2.0:')"
echo "LAB big-refused-mid-named $(grep 'refused a service' /tmp/lb3.log | grep -c 'tcp/10.100.2.0:80')"
echo "LAB big-refused-end-named $(grep 'refused a service' /tmp/lb3.log | grep -c 'tcp/10.101.0.1:80')"
echo "LAB big-refused-others $(grep -e 'refused a service' -e 'operation failed' /tmp/lb3.log | grep -v -e 'tcp/10.100.2.0:80' -e 'tcp/10.101.0.1:80' | wc -l)"
grep -e 'refused a service' -e 'operation failed' /tmp/lb3.log | grep -v -e 'tcp/10.100.2.0:80' -e 'tcp/10.101.0.1:80' | head -3 | sed 's/^/LAB other-failure+ /'
echo "LAB big-refused-metric $(wget -q -O - http://127.0.0.1:9445/metrics | awk '$1=="lb_dataplane_refused_services"{print $2}')"
wget -q -O - http://127.0.0.1:9445/metrics | grep '^lb_dataplane_refused_services' | sed 's/^/LAB metric+ /'
grep 'refused a service' /tmp/lb3.log | head -3 | sed 's/^/LAB refusal+ /'
kill $pid
"#;

#[test]
fn fwmark_restart_udp_removal_refused_service_and_an_ownerless_config() -> anyhow::Result<()> {
    let lab = KernelLab::find()?;
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
    write("before.toml", services(false))?;
    write("after.toml", services(true))?;
    write("big-services.toml", big_table())?;
    write("member.toml", config("live.toml", ""))?;
    write(
        "bare.toml",
        config("live.toml", "vip_interface = \"\"\nmasquerade = false"),
    )?;
    write("big.toml", config("big-services.toml", ""))?;
    let lb_node = binary("lb-node")?;
    let files: Vec<(String, std::path::PathBuf)> = [
        "before.toml",
        "after.toml",
        "big-services.toml",
        "member.toml",
        "bare.toml",
        "big.toml",
    ]
    .iter()
    .map(|f| (format!("/lab/{f}"), dir.path().join(f)))
    .chain([
        ("/usr/local/bin/lb-node".to_owned(), lb_node),
        ("/usr/local/bin/lab-http".to_owned(), binary("lab-http")?),
    ])
    .collect();
    let files: Vec<(&str, &std::path::Path)> = files
        .iter()
        .map(|(g, h)| (g.as_str(), h.as_path()))
        .collect();
    let run = lab.run(SCRIPT, &files, 2048, Duration::from_secs(900))?;
    eprintln!("guest ran {:?}", run.elapsed);
    for l in &run.results {
        eprintln!("  {l}");
    }
    let context = || {
        format!(
            "results:\n{}\nconsole tail:\n{}",
            run.results.join("\n"),
            tail(&run.console, 30)
        )
    };
    let number = |k: &str| -> f64 { run.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN) };

    // The ownerless configuration.
    assert_eq!(run.get("bare-exit"), Some("2"), "{}", context());
    assert!(
        run.block("bare")
            .iter()
            .any(|l| l.contains("dataplane.vip_interface") && l.contains("managed_networks")),
        "{}",
        context()
    );

    // Firewall-mark services after a restart: equal to the plan within
    // 10 s (the repair interval is 30 s), mark 100 gone.
    assert_eq!(run.get("fwmarks-before"), Some("2"), "{}", context());
    assert_eq!(run.get("restarted-equal"), Some("yes"), "{}", context());
    assert_eq!(run.get("fwmark-100-left"), Some("0"), "{}", context());
    assert!(
        !run.block("marks").iter().any(|l| l.contains("0x00000064")),
        "mark 100's rule is left: {}",
        context()
    );

    // UDP: both backends had a flow; the removed one went at once.
    assert!(number("udp-flows") >= 2.0, "{}", context());
    assert_eq!(run.get("udp-b1-left"), Some("0"), "{}", context());
    let udp = number("udp-removed-seconds");
    eprintln!("UDP backend with a live flow removed in {udp:.1} s (drain_timeout 30 s)");
    assert!(udp < 3.0, "{}", context());

    // The refused service: one scheduler missing costs no whole-table
    // dumps and a handful of warnings (1, 2, 4, 8 s apart), and the rest
    // of the table is programmed.
    assert_eq!(run.get("big-destinations"), Some("10000"), "{}", context());
    assert_eq!(run.get("big-refused-in-kernel"), Some("0"), "{}", context());
    // Each refusal is pinned on its own service, the one in the middle of
    // a send included, and no other service counts as refused.
    assert!(number("big-refused-mid-named") >= 1.0, "{}", context());
    assert!(number("big-refused-end-named") >= 1.0, "{}", context());
    assert_eq!(number("big-refused-metric"), 2.0, "{}", context());
    assert_eq!(number("big-refused-others"), 0.0, "{}", context());
    // (The first dump, at start, is counted: the metric is there.)
    assert!(number("big-dumps-total") >= 1.0, "{}", context());
    assert_eq!(number("big-dumps"), 0.0, "{}", context());
    assert!(number("big-refusals") <= 10.0, "{}", context());
    eprintln!(
        "with one refused service in 1,000 x 10: {} CPU ticks (1/100 s) in 10 s, {} warnings",
        number("big-cpu-ticks"),
        number("big-refusals")
    );
    Ok(())
}
