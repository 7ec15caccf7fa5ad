//! The cluster lab: a Kubernetes cluster with no kube-proxy, in network
//! namespaces, and the appliance in front of it. Three nodes with two
//! pods each, the test API server holding Nodes, Services and
//! EndpointSlices, three lb-node members programming IPVS (so it runs in
//! the kernel lab's guest), and, in BGP mode, a router running BIRD.
//!
//! ```text
//!   pods   n1a n1b        n2a n2b        n3a n3b      10.244.N.10 / .11, behind cbr0
//!           \ /            \ /            \ /
//!   nodes   n1 .11         n2 .12         n3 .13       route pods, no Service rules
//!            \______________|______________/
//!                 node LAN 10.80.0.0/24 ─── api .250 (the test API server)
//!   l2:   m1 m2 m3 (.1-.3) on the node LAN; service gateways .50-.52
//!   bgp:  r (.254, BIRD) ─── LB LAN 10.81.0.0/24 ─── m1 m2 m3 (10.81.0.1-3)
//! ```
//!
//! The two ways a cluster reaches Services through the appliance
//! (docs/kubernetes.md, *Replacing kube-proxy*):
//!
//! - `Mode::L2`, a flat network: nodes route the service CIDR through the
//!   three service gateways (one multipath route), which the members own
//!   and fail over like VIPs; nothing but the nodes knows the pod CIDRs, so
//!   the members watch Nodes and route each pod CIDR to its node
//!   (`pod_routes`). Pods reach each other as flannel's host-gw sets it up
//!   (a route per other node's pod CIDR on every node).
//! - `Mode::Bgp`, a routed fabric: each node's BIRD announces its pod CIDR
//!   to the router, as Calico's does; every member announces the service
//!   CIDR to the router, which spreads it over them by ECMP; nodes and
//!   members have the router as their default route.
//!
//! No node or pod namespace holds a firewall rule of any kind, once the
//! connectivity drill removed its stand-ins for kube-proxy's
//! (`Lab::service_rules` checks it; empty base chains are no rule):
//! Service traffic leaves the node as plain routed packets.
//!
//! Needs root, iproute2, tcpdump, BIRD 2 (`bird`, `birdc`) and, for the
//! traffic through the members, a kernel with IPVS (`--tier ipvs`, the
//! kernel lab). Everything lives in namespaces the lab creates, deleted
//! when it is dropped.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::Member;
use crate::fake_api::{FakeApi, Kind};
use crate::netns::{in_ns, ns_output, run};

/// How nodes send Service traffic to the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Service gateways on the node LAN, pod routes from the Nodes.
    L2,
    /// The service CIDR announced by BGP, pod CIDRs routed by the fabric.
    Bgp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::L2 => "l2",
            Mode::Bgp => "bgp",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "l2" => Some(Mode::L2),
            "bgp" => Some(Mode::Bgp),
            _ => None,
        }
    }

    /// Where the members live: the node LAN (L2) or their own (BGP).
    fn member_address(self, id: u64) -> String {
        match self {
            Mode::L2 => format!("10.80.0.{id}"),
            Mode::Bgp => format!("10.81.0.{id}"),
        }
    }
}

pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const GATEWAYS: [&str; 3] = ["10.80.0.50", "10.80.0.51", "10.80.0.52"];
pub const API_ADDRESS: &str = "10.80.0.250:6443";
/// The router's address on each LAN.
const ROUTER_NODES: &str = "10.80.0.254";
const ROUTER_LBS: &str = "10.81.0.254";
const ROUTER_AS: u32 = 64500;
const NODES_AS: u32 = 64512;
const MEMBERS_AS: u32 = 65001;
/// The BGP hold time between router and members: the smallest RFC 4271
/// allows (3 s). Until BFD (a separate issue), a member whose machine is
/// lost keeps its ECMP path on the router this long.
pub const HOLD_TIME: u64 = 3;

/// The Services of the lab: (namespace, name, ClusterIP, ports as
/// (name, port, protocol, target port), the pods behind it).
pub const KUBE_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const ECHO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
pub const IPERF: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
pub const WEB_NAME: &str = "web.default.svc.cluster.local";

/// A pod: its namespace suffix, its node (1-3) and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub node: u8,
    pub ip: Ipv4Addr,
}

impl Pod {
    pub fn new(name: &str, node: u8, host: u8) -> Pod {
        Pod {
            name: name.to_owned(),
            node,
            ip: Ipv4Addr::new(10, 244, node, host),
        }
    }
}

/// The pods the lab starts with.
pub fn initial_pods() -> Vec<Pod> {
    vec![
        Pod::new("n1a", 1, 10), // the client
        Pod::new("n1b", 1, 11), // web
        Pod::new("n2a", 2, 10), // web
        Pod::new("n2b", 2, 11), // dns
        Pod::new("n3a", 3, 10), // web, echo, iperf3
        Pod::new("n3b", 3, 11), // dns
    ]
}
pub const CLIENT: &str = "n1a";
pub const WEB_PODS: [&str; 3] = ["n1b", "n2a", "n3a"];
const DNS_PODS: [&str; 2] = ["n2b", "n3b"];
const ECHO_POD: &str = "n3a";

/// The lab.
#[derive(Debug)]
pub struct Lab {
    pub mode: Mode,
    prefix: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    /// Servers in pods, BIRDs: killed on drop. By what they are.
    children: BTreeMap<String, Child>,
    pub pods: Vec<Pod>,
    pub members: BTreeMap<u64, Member>,
    /// Logs of members stopped or killed before a restart.
    pub past_logs: Vec<(u64, String)>,
    admin_ports: BTreeMap<u64, u16>,
    /// Member id by MAC address (its eth0).
    pub macs: BTreeMap<String, u64>,
    /// The runtime in the API server's namespace: the API server and the
    /// drill's admin calls run on it.
    pub control: tokio::runtime::Runtime,
    pub api: Option<FakeApi>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members.clear();
        self.api = None;
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// The node LAN's bridge and the LB LAN's, in the switch namespace.
const NODE_BRIDGE: &str = "nodes";
const LB_BRIDGE: &str = "lbs";

impl Lab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Builds the namespaces, starts the API server with the cluster's
    /// objects, BIRD (BGP mode), the pods' servers and the three members,
    /// and waits until the appliance serves every Service.
    pub fn start(mode: Mode, tag: &str) -> anyhow::Result<Lab> {
        let prefix = format!("k{}{tag}", std::process::id() % 100_000);
        let dir = tempfile::tempdir()?;
        // The switch, and the control namespace where the API server lives,
        // come first: the runtime must be built inside the latter.
        let sw = format!("{prefix}-sw");
        let api_ns = format!("{prefix}-api");
        run(&["ip", "netns", "add", &sw])?;
        let mut namespaces = vec![sw.clone()];
        let built = (|| -> anyhow::Result<tokio::runtime::Runtime> {
            for bridge in [NODE_BRIDGE, LB_BRIDGE] {
                in_ns(&sw, &["ip", "link", "add", bridge, "type", "bridge"])?;
                in_ns(&sw, &["ip", "link", "set", bridge, "up"])?;
            }
            run(&["ip", "netns", "add", &api_ns])?;
            crate::netns::runtime_in(&api_ns, 2)
        })();
        namespaces.push(api_ns);
        let control = match built {
            Ok(rt) => rt,
            Err(e) => {
                for ns in namespaces.iter().rev() {
                    let _ = run(&["ip", "netns", "del", ns]);
                }
                return Err(e);
            }
        };
        let mut lab = Lab {
            mode,
            prefix,
            dir,
            namespaces,
            children: BTreeMap::new(),
            pods: Vec::new(),
            members: BTreeMap::new(),
            past_logs: Vec::new(),
            admin_ports: BTreeMap::new(),
            macs: BTreeMap::new(),
            control,
            api: None,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let mode = self.mode;
        // The API server's namespace on the node LAN.
        self.attach("api", NODE_BRIDGE, "eth0", "10.80.0.250/24")?;
        if mode == Mode::Bgp {
            self.add_ns("r")?;
            self.attach("r", NODE_BRIDGE, "eth0", &format!("{ROUTER_NODES}/24"))?;
            self.attach("r", LB_BRIDGE, "eth1", &format!("{ROUTER_LBS}/24"))?;
            self.router_sysctls("r")?;
            // Plain routed hops: no redirects telling hosts to go around.
            for (key, value) in [
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
            ] {
                self.sysctl("r", key, value)?;
            }
            self.exec(
                "api",
                &["ip", "route", "add", "default", "via", ROUTER_NODES],
            )?;
        }
        // Nodes: a bridge for their pods, routing between pods as a flat
        // CNI sets it up.
        for n in 1..=3u8 {
            let node = format!("n{n}");
            self.add_ns(&node)?;
            self.attach(&node, NODE_BRIDGE, "eth0", &format!("10.80.0.1{n}/24"))?;
            // A MAC of its own: a bridge otherwise takes its lowest
            // port's, and a pod coming or going would change the pods'
            // gateway MAC under them (seconds of lost packets until their
            // ARP caches notice; the CNI bridge plugin sets one too).
            self.exec(
                &node,
                &[
                    "ip",
                    "link",
                    "add",
                    "cbr0",
                    "address",
                    &format!("02:00:00:00:0{n}:01"),
                    "type",
                    "bridge",
                ],
            )?;
            self.exec(
                &node,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.244.{n}.1/24"),
                    "dev",
                    "cbr0",
                ],
            )?;
            self.exec(&node, &["ip", "link", "set", "cbr0", "up"])?;
            self.router_sysctls(&node)?;
            match mode {
                Mode::L2 => {
                    for other in (1..=3u8).filter(|o| *o != n) {
                        self.exec(
                            &node,
                            &[
                                "ip",
                                "route",
                                "add",
                                &format!("10.244.{other}.0/24"),
                                "via",
                                &format!("10.80.0.1{other}"),
                            ],
                        )?;
                    }
                    // The service CIDR through the three gateways: what
                    // docs/kubernetes.md tells an operator to add.
                    let mut route = vec!["ip", "route", "add", SERVICE_CIDR];
                    for g in GATEWAYS {
                        route.extend(["nexthop", "via", g]);
                    }
                    self.exec(&node, &route)?;
                }
                Mode::Bgp => {
                    // Pods on other nodes and Services alike: the fabric.
                    self.exec(
                        &node,
                        &["ip", "route", "add", "default", "via", ROUTER_NODES],
                    )?;
                }
            }
        }
        for pod in initial_pods() {
            self.add_pod(pod)?;
        }
        self.start_api()?;
        if mode == Mode::Bgp {
            self.start_birds()?;
        }
        self.start_servers()?;
        self.start_members()?;
        Ok(())
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])
    }

    /// Joins namespace `name` to `bridge` through a veth whose inner end
    /// is `iface` with address `cidr`.
    fn attach(&self, name: &str, bridge: &str, iface: &str, cidr: &str) -> anyhow::Result<()> {
        let sw = self.ns("sw");
        let ns = self.ns(name);
        let port = format!("{name}-{iface}");
        in_ns(
            &sw,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", iface, "netns", &ns,
            ],
        )?;
        in_ns(&sw, &["ip", "link", "set", &port, "master", bridge, "up"])?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&ns, &["ip", "addr", "add", cidr, "dev", iface])?;
        in_ns(&ns, &["ip", "link", "set", iface, "up"])
    }

    fn sysctl(&self, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(name, &["sysctl", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Forwarding, and multipath routes hashed per connection (L4), so
    /// that one client's connections spread over the members as a
    /// router's ECMP spreads them.
    fn router_sysctls(&self, name: &str) -> anyhow::Result<()> {
        self.sysctl(name, "net.ipv4.ip_forward", "1")?;
        self.sysctl(name, "net.ipv4.fib_multipath_hash_policy", "1")
    }

    /// A pod namespace behind its node's bridge.
    pub fn add_pod(&mut self, pod: Pod) -> anyhow::Result<()> {
        let node = format!("n{}", pod.node);
        self.add_ns(&pod.name)?;
        let (node_ns, pod_ns) = (self.ns(&node), self.ns(&pod.name));
        let port = format!("v{}", pod.name);
        in_ns(
            &node_ns,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &pod_ns,
            ],
        )?;
        in_ns(
            &node_ns,
            &["ip", "link", "set", &port, "master", "cbr0", "up"],
        )?;
        in_ns(
            &pod_ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", pod.ip),
                "dev",
                "eth0",
            ],
        )?;
        in_ns(&pod_ns, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(
            &pod_ns,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{}.1", pod.node),
            ],
        )?;
        self.pods.push(pod);
        Ok(())
    }

    /// Deletes a pod and whatever ran in it.
    pub fn remove_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let keys: Vec<String> = self
            .children
            .keys()
            .filter(|k| k.starts_with(&format!("{name}:")))
            .cloned()
            .collect();
        for k in keys {
            if let Some(mut child) = self.children.remove(&k) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let ns = self.ns(name);
        run(&["ip", "netns", "del", &ns])?;
        self.namespaces.retain(|n| *n != ns);
        self.pods.retain(|p| p.name != name);
        Ok(())
    }

    pub fn pod(&self, name: &str) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    /// Runs a command inside namespace `name` ("n1", "m2", "r", a pod).
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        ns_output(&self.ns(name), args).with_context(|| format!("in {name}"))
    }

    /// Starts a long-running command in namespace `name`, known as `what`
    /// (killed with the lab, or with its pod).
    pub fn spawn(&mut self, what: &str, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", args[0]))?;
        self.children.insert(format!("{name}:{what}"), child);
        Ok(())
    }

    /// Runs `fut` on the control runtime (in the API server's namespace)
    /// and waits for it.
    pub fn on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let handle = self.control.spawn(fut);
        self.control
            .block_on(handle)
            .map_err(|e| anyhow::anyhow!("control task failed: {e}"))
    }

    pub fn api(&self) -> anyhow::Result<&FakeApi> {
        self.api.as_ref().context("the API server is not running")
    }

    fn start_api(&mut self) -> anyhow::Result<()> {
        let addr: SocketAddr = API_ADDRESS.parse()?;
        let api = self.on(FakeApi::start_on(addr, Duration::from_secs(60)))??;
        for n in 1..=3 {
            api.apply(
                Kind::Nodes,
                json!({
                    "metadata": {"name": format!("n{n}")},
                    "spec": {"podCIDR": format!("10.244.{n}.0/24"), "podCIDRs": [format!("10.244.{n}.0/24")]},
                    "status": {"addresses": [
                        {"type": "InternalIP", "address": format!("10.80.0.1{n}")},
                        {"type": "Hostname", "address": format!("n{n}")},
                    ]},
                }),
            )
            .map_err(|e| anyhow::anyhow!("node n{n}: {e}"))?;
        }
        let service = |ns: &str, name: &str, ip: Ipv4Addr, ports: Value| {
            json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                         "ipFamilies": ["IPv4"], "ports": ports, "selector": {"app": name}},
            })
        };
        let objects = [
            service(
                "kube-system",
                "kube-dns",
                KUBE_DNS,
                json!([
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ]),
            ),
            service(
                "default",
                "web",
                WEB,
                json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]),
            ),
            service(
                "default",
                "echo",
                ECHO,
                json!([{"name": "echo", "port": 7, "protocol": "TCP", "targetPort": 7777}]),
            ),
            service(
                "default",
                "iperf",
                IPERF,
                json!([{"name": "iperf", "port": 5201, "protocol": "TCP", "targetPort": 5201}]),
            ),
        ];
        for o in objects {
            api.apply(Kind::Services, o)
                .map_err(|e| anyhow::anyhow!("a Service: {e}"))?;
        }
        self.api = Some(api);
        self.set_endpoints("kube-system", "kube-dns", &DNS_PODS, &[])?;
        self.set_endpoints("default", "web", &WEB_PODS, &[])?;
        self.set_endpoints("default", "echo", &[ECHO_POD], &[])?;
        self.set_endpoints("default", "iperf", &[ECHO_POD], &[])?;
        Ok(())
    }

    /// Writes the EndpointSlice of a Service as the endpoints controller
    /// would: `ready` pods ready, `terminating` ones serving and
    /// terminating.
    pub fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        ready: &[&str],
        terminating: &[&str],
    ) -> anyhow::Result<()> {
        let ports = match service {
            "kube-dns" => json!([
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]),
            "web" => json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            "echo" => json!([{"name": "echo", "port": 7777, "protocol": "TCP"}]),
            "iperf" => json!([{"name": "iperf", "port": 5201, "protocol": "TCP"}]),
            other => bail!("no ports known for Service {other}"),
        };
        let mut endpoints = Vec::new();
        for (names, is_ready) in [(ready, true), (terminating, false)] {
            for name in names {
                let pod = self.pod(name)?;
                endpoints.push(json!({
                    "addresses": [pod.ip.to_string()],
                    "conditions": {"ready": is_ready, "serving": true, "terminating": !is_ready},
                    "nodeName": format!("n{}", pod.node),
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": name},
                }));
            }
        }
        self.api()?
            .apply(
                Kind::EndpointSlices,
                json!({
                    "metadata": {"name": format!("{service}-1"), "namespace": namespace,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                }),
            )
            .map_err(|e| anyhow::anyhow!("EndpointSlice of {service}: {e}"))?;
        Ok(())
    }

    /// The router's BIRD (it learns the pod CIDRs from the nodes and the
    /// service CIDR from the members, and installs both in its kernel, the
    /// latter over every member: ECMP) and each node's, announcing the
    /// node's pod CIDR as Calico's BIRD does.
    fn start_birds(&mut self) -> anyhow::Result<()> {
        let mut router = format!(
            "router id {ROUTER_NODES};\nprotocol device {{ scan time 10; }}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             template bgp lbmember {{ local {ROUTER_LBS} as {ROUTER_AS}; hold time {HOLD_TIME}; passive on; error wait time 1, 5;\n  ipv4 {{ import all; export none; }}; }}\n\
             template bgp k8snode {{ local {ROUTER_NODES} as {ROUTER_AS}; passive on; error wait time 1, 5;\n  ipv4 {{ import all; export none; }}; }}\n"
        );
        for id in 1..=3 {
            router.push_str(&format!(
                "protocol bgp m{id} from lbmember {{ neighbor 10.81.0.{id} as {MEMBERS_AS}; }}\n"
            ));
        }
        for n in 1..=3 {
            router.push_str(&format!(
                "protocol bgp n{n} from k8snode {{ neighbor 10.80.0.1{n} as {NODES_AS}; }}\n"
            ));
        }
        self.start_bird("r", &router)?;
        for n in 1..=3 {
            let text = format!(
                "router id 10.80.0.1{n};\nprotocol device {{ }}\n\
                 protocol static {{ ipv4; route 10.244.{n}.0/24 blackhole; }}\n\
                 protocol bgp fabric {{ local 10.80.0.1{n} as {NODES_AS}; neighbor {ROUTER_NODES} as {ROUTER_AS};\n  connect retry time 1; error wait time 1, 5;\n  ipv4 {{ import none; export all; }}; }}\n"
            );
            self.start_bird(&format!("n{n}"), &text)?;
        }
        Ok(())
    }

    fn start_bird(&mut self, name: &str, config: &str) -> anyhow::Result<()> {
        let path = self.dir.path().join(format!("bird-{name}.conf"));
        std::fs::write(&path, config)?;
        let socket = self.bird_socket(name);
        let pid = self.dir.path().join(format!("bird-{name}.pid"));
        let args = [
            "bird",
            "-f",
            "-c",
            path.to_str().unwrap_or_default(),
            "-s",
            socket.to_str().unwrap_or_default(),
            "-P",
            pid.to_str().unwrap_or_default(),
        ];
        self.spawn("bird", name, &args)
    }

    fn bird_socket(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("bird-{name}.ctl"))
    }

    /// `birdc show route all` of the router.
    pub fn router_routes(&self) -> anyhow::Result<String> {
        let socket = self.bird_socket("r");
        self.exec(
            "r",
            &[
                "birdc",
                "-s",
                socket.to_str().unwrap_or_default(),
                "show",
                "route",
                "all",
            ],
        )
    }

    /// The web pods answer with their name, the DNS pods serve the
    /// cluster's names, the echo pod echoes and runs iperf3's server.
    fn start_servers(&mut self) -> anyhow::Result<()> {
        let lab_http = crate::binary("lab-http")?;
        let lab_http = lab_http.to_str().context("lab-http path")?.to_owned();
        let lab_dns = crate::binary("lab-dns")?;
        let lab_dns = lab_dns.to_str().context("lab-dns path")?.to_owned();
        for pod in WEB_PODS {
            self.spawn("http", pod, &[&lab_http, "serve", "0.0.0.0:8080", pod])?;
        }
        let zone = [
            format!("{WEB_NAME}={WEB}"),
            format!("kube-dns.kube-system.svc.cluster.local={KUBE_DNS}"),
            format!("echo.default.svc.cluster.local={ECHO}"),
            format!("iperf.default.svc.cluster.local={IPERF}"),
        ];
        for pod in DNS_PODS {
            let mut args = vec![lab_dns.as_str(), "serve", "0.0.0.0:53"];
            args.extend(zone.iter().map(String::as_str));
            self.spawn("dns", pod, &args)?;
        }
        self.spawn("echo", ECHO_POD, &[&lab_http, "echo", "0.0.0.0:7777"])?;
        if Path::new("/usr/bin/iperf3").exists() {
            self.spawn("iperf", ECHO_POD, &["iperf3", "-s", "-p", "5201"])?;
        }
        Ok(())
    }

    /// Starts a web pod's server on a new pod (a pod that moved).
    pub fn start_web_pod(&mut self, pod: &str) -> anyhow::Result<()> {
        let lab_http = crate::binary("lab-http")?;
        let lab_http = lab_http.to_str().context("lab-http path")?.to_owned();
        self.spawn("http", pod, &[&lab_http, "serve", "0.0.0.0:8080", pod])
    }

    fn start_members(&mut self) -> anyhow::Result<()> {
        let mode = self.mode;
        for id in 1..=3u64 {
            let name = format!("m{id}");
            self.add_ns(&name)?;
            let address = mode.member_address(id);
            let bridge = if mode == Mode::L2 {
                NODE_BRIDGE
            } else {
                LB_BRIDGE
            };
            self.attach(&name, bridge, "eth0", &format!("{address}/24"))?;
            if mode == Mode::Bgp {
                self.exec(&name, &["ip", "route", "add", "default", "via", ROUTER_LBS])?;
            }
            let mac = self.exec(&name, &["cat", "/sys/class/net/eth0/address"])?;
            self.macs.insert(mac.trim().to_owned(), id);
        }
        let api = self.api()?;
        let kubeconfig = api.write_kubeconfig(self.dir.path(), "lb-node")?;
        let ports: Vec<(u64, u16, u16)> = (1..=3)
            .map(|id| Ok((id, crate::free_port()?, crate::free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let list: Vec<String> = ports
            .iter()
            .map(|(id, peer, admin)| {
                let a = mode.member_address(*id);
                format!("{{ id = {id}, address = \"{a}:{peer}\", admin = \"{a}:{admin}\" }}")
            })
            .collect();
        let emulated = std::env::var_os("DRILL_EMULATED").is_some();
        // Debugging on a kernel without IPVS: `memory` builds the whole
        // lab (nothing forwards Service traffic then).
        let dataplane = std::env::var("CLUSTER_LAB_DATAPLANE").unwrap_or_else(|_| "ipvs".into());
        for (id, peer, admin) in &ports {
            let address = mode.member_address(*id);
            let announce = match mode {
                Mode::L2 => format!(
                    "[announce]\nmode = \"l2\"\ninterface = \"eth0\"\nvip_ranges = [\"10.80.0.48/28\"]\n\
                     service_cidrs = [\"{SERVICE_CIDR}\"]\nservice_gateways = [{}]\n{}",
                    GATEWAYS.map(|g| format!("\"{g}\"")).join(", "),
                    if emulated {
                        "handover_probe_wait = \"100ms\"\n"
                    } else {
                        ""
                    }
                ),
                Mode::Bgp => format!(
                    "[announce]\nmode = \"bgp\"\nlocal_as = {MEMBERS_AS}\nrouter_id = \"{address}\"\nhold_time = {HOLD_TIME}\n\
                     service_cidrs = [\"{SERVICE_CIDR}\"]\n\n[[announce.peer]]\naddress = \"{ROUTER_LBS}\"\nas = {ROUTER_AS}\n"
                ),
            };
            let config = self.dir.path().join(format!("member-{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[node]\nid = {id}\ninsecure = true\n\n[dataplane]\nkind = \"{dataplane}\"\n\n\
                     [source.kubernetes]\nkubeconfig = \"{}\"\npod_routes = {}\n\n\
                     [admin]\nlisten = \"0.0.0.0:{admin}\"\nmetrics_listen = \"127.0.0.1:0\"\n\n{announce}\n\
                     [cluster]\nid = \"cluster-lab\"\ndata_dir = \"data-{id}\"\nlisten = \"{address}:{peer}\"\nmember = [{}]\n",
                    kubeconfig.display(),
                    mode == Mode::L2,
                    list.join(", ")
                ),
            )?;
            self.admin_ports.insert(*id, *admin);
        }
        for id in 1..=3 {
            self.restart(id)?;
        }
        Ok(())
    }

    /// Starts member `id` (again) with its config.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let config = self.dir.path().join(format!("member-{id}.toml"));
        let ns = self.ns(&format!("m{id}"));
        self.members
            .insert(id, Member::start_in(Some(&ns), &config)?);
        Ok(())
    }

    /// Keeps the log of member `id`, stopped or killed, for `DRILL_LOGS`.
    pub fn retire(&mut self, id: u64, member: Member) {
        self.past_logs.push((id, member.log()));
    }

    /// Member `id`'s admin API, as the control namespace reaches it.
    pub fn admin_endpoint(&self, id: u64) -> String {
        format!(
            "http://{}:{}",
            self.mode.member_address(id),
            self.admin_ports.get(&id).copied().unwrap_or(0)
        )
    }

    /// Runs lbctl against member `id` inside its namespace: (exit code,
    /// standard output).
    pub fn lbctl(&self, id: u64, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("m{id}"))])
            .arg(crate::binary("lbctl")?)
            .arg("--endpoint")
            .arg(format!(
                "http://127.0.0.1:{}",
                self.admin_ports.get(&id).copied().unwrap_or(0)
            ))
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Firewall rules in the namespaces of nodes and pods: (namespace,
    /// what was found). Empty: no kube-proxy-like rules anywhere. Reads
    /// nftables (which also holds iptables-nft's rules) and the legacy
    /// iptables tables the kernel has loaded.
    pub fn service_rules(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let names: Vec<String> = (1..=3)
            .map(|n| format!("n{n}"))
            .chain(self.pods.iter().map(|p| p.name.clone()))
            .collect();
        for name in names {
            // Rules, not the empty base chains (policy accept) that
            // `iptables-restore` leaves in a nat table it was given empty.
            let ruleset = self.exec(&name, &["nft", "list", "ruleset"])?;
            let rules: Vec<&str> = ruleset
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !["table ", "chain ", "type ", "}"]
                            .iter()
                            .any(|p| l.starts_with(p))
                })
                .collect();
            if !rules.is_empty() {
                found.push((name.clone(), rules.join("; ")));
            }
            let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
            if !legacy.trim().is_empty() {
                found.push((name, format!("iptables tables: {}", legacy.trim())));
            }
        }
        Ok(found)
    }

    /// The routing tables that carry Service traffic, for the report:
    /// each node's route for the service CIDR and the pod CIDRs, each
    /// member's pod routes, the router's.
    pub fn tables(&self) -> anyhow::Result<Value> {
        let mut nodes = serde_json::Map::new();
        for n in 1..=3 {
            let name = format!("n{n}");
            nodes.insert(
                name.clone(),
                json!(lines(&self.exec(&name, &["ip", "route"])?)),
            );
        }
        let mut members = serde_json::Map::new();
        for id in self.members.keys() {
            let name = format!("m{id}");
            members.insert(
                name.clone(),
                json!(lines(&self.exec(&name, &["ip", "route"])?)),
            );
        }
        let mut out = json!({"nodes": nodes, "members": members});
        if self.mode == Mode::Bgp {
            out["router"] = json!(lines(&self.exec("r", &["ip", "route"])?));
        }
        Ok(out)
    }

    /// The router's next hops for the service CIDR (BGP mode), by reading
    /// its kernel table.
    pub fn service_nexthops(&self) -> anyhow::Result<Vec<String>> {
        let out = self.exec("r", &["ip", "route", "show", SERVICE_CIDR])?;
        Ok(out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A command's output as trimmed, non-empty lines.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}
