use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let file = Path::new("/etc/lb-node/member.toml");
    Config::validate(parse_toml(text, file)?, file)
}

const NODE: &str = "[node]\nid = 1\n";

#[test]
fn the_kubernetes_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/kubernetes.toml");
    let config = Config::load(&path).expect("the example is valid");
    let SourceConfig::Kubernetes(k) = config.source else {
        panic!("a kubernetes source");
    };
    assert_eq!(
        k.kubeconfig.as_deref(),
        Some(Path::new("/etc/lb-node/kubeconfig"))
    );
    assert_eq!(k.address_pools.len(), 2);
    assert_eq!(k.batch_window, Duration::from_millis(5));
    assert!(k.translate.handle_classless);
}

#[test]
fn kubernetes_defaults_and_relative_kubeconfig() {
    let config = load(&format!(
        "{NODE}[source.kubernetes]\nkubeconfig = \"kube.yaml\"\n"
    ))
    .expect("valid");
    let SourceConfig::Kubernetes(k) = config.source else {
        panic!("a kubernetes source");
    };
    assert_eq!(
        k.kubeconfig.as_deref(),
        Some(Path::new("/etc/lb-node/kube.yaml"))
    );
    assert_eq!(k.namespace, None);
    assert!(k.address_pools.is_empty());
    assert_eq!(
        k.translate,
        crate::source::kubernetes::translate::TranslateConfig::default()
    );
}

#[test]
fn bad_kubernetes_settings_name_their_field() {
    let cases = [
        (
            "address_pools = [\"192.0.2.1/24\"]",
            "source.kubernetes.address_pools[0]",
            "host bits",
        ),
        (
            "address_pools = [\"nope\"]",
            "source.kubernetes.address_pools[0]",
            "not a network",
        ),
        (
            "default_scheduler = \"fastest\"",
            "source.kubernetes.default_scheduler",
            "fastest",
        ),
        (
            "default_forwarding = \"nat\"",
            "source.kubernetes.default_forwarding",
            "nat",
        ),
        (
            "batch_window = \"5s\"",
            "source.kubernetes.batch_window",
            "at most 1s",
        ),
        (
            "batch_window = \"soon\"",
            "source.kubernetes.batch_window",
            "soon",
        ),
        (
            "load_balancer_class = \"\"",
            "source.kubernetes.load_balancer_class",
            "empty",
        ),
        (
            "watch_everything = true",
            "source.kubernetes",
            "unknown field",
        ),
    ];
    for (line, field, words) in cases {
        let e = load(&format!("{NODE}[source.kubernetes]\n{line}\n")).expect_err(line);
        let text = e.to_string();
        assert!(
            text.contains(field) && text.contains(words),
            "{line}: {text}"
        );
    }
}

#[test]
fn exactly_one_source() {
    let both = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[source.kubernetes]\n"
    ))
    .expect_err("two sources");
    assert!(both.to_string().contains("configure one"), "{both}");
    let none = load(&format!("{NODE}[source]\n")).expect_err("no source");
    assert!(none.to_string().contains("[source.kubernetes]"), "{none}");
}

const BGP: &str = "[source.file]\npath = \"s.toml\"\n[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.0.0.1\"\n";

#[test]
fn bgp_peers_take_their_own_source_ttl_prefixes_and_attributes() {
    let config = load(&format!(
        "{NODE}{BGP}large_communities = [\"65001:1:2\"]\nmed = 10\n\
         [[announce.peer]]\naddress = \"10.0.0.254\"\nas = 65000\nsource = \"10.0.0.1\"\nttl = 1\n\
         prefixes = [\"192.0.2.0/24\"]\ncommunities = [\"65000:7\"]\nlarge_communities = [\"65000:3:4\"]\nmed = 20\n"
    ))
    .expect("valid");
    let crate::announce::AnnounceConfig::Bgp(b) = config.announce else {
        panic!("bgp");
    };
    assert_eq!(b.large_communities, vec![(65001, 1, 2)]);
    assert_eq!(b.med, Some(10));
    let p = &b.peers[0];
    assert_eq!(p.source, Some("10.0.0.1".parse().expect("ip")));
    assert_eq!(p.ttl, Some(1));
    assert_eq!(
        p.prefixes,
        vec!["192.0.2.0/24".parse::<ipnet::IpNet>().expect("net")]
    );
    assert_eq!(p.communities, vec![(65000 << 16) | 7]);
    assert_eq!(p.large_communities, vec![(65000, 3, 4)]);
    assert_eq!(p.med, Some(20));
    assert_eq!(p.password, None);
}

#[test]
fn a_bgp_password_comes_inline_or_from_a_file_without_its_line_end() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("r1.key"), "s3cret\n").expect("key");
    let file = dir.path().join("member.toml");
    let text = format!(
        "{NODE}{BGP}[[announce.peer]]\naddress = \"10.0.0.254\"\nas = 65000\npassword_file = \"r1.key\"\n\
         [[announce.peer]]\naddress = \"10.0.0.253\"\nas = 65000\npassword = \"s3cret\"\n"
    );
    let config = Config::validate(parse_toml(&text, &file).expect("toml"), &file).expect("valid");
    let crate::announce::AnnounceConfig::Bgp(b) = config.announce else {
        panic!("bgp");
    };
    let want = crate::announce::bgp::md5::Key::new(b"s3cret".to_vec()).expect("key");
    assert_eq!(b.peers[0].password.as_ref(), Some(&want));
    assert_eq!(b.peers[1].password.as_ref(), Some(&want));
    assert!(!format!("{:?}", b.peers[0]).contains("s3cret"));
}

#[test]
fn bad_bgp_peer_settings_name_their_field() {
    let long_password = format!("password = \"{}\"", "x".repeat(81));
    let cases = [
        ("source = \"nope\"", "announce.peer[0].source", "not an IP"),
        (
            "source = \"2001:db8::1\"",
            "announce.peer[0].source",
            "family",
        ),
        ("ttl = 0", "announce.peer[0].ttl", "1 to 255"),
        (
            "prefixes = [\"x\"]",
            "announce.peer[0].prefixes[0]",
            "not a network",
        ),
        (
            "communities = [\"1\"]",
            "announce.peer[0].communities[0]",
            "community",
        ),
        (
            "large_communities = [\"1:2\"]",
            "announce.peer[0].large_communities[0]",
            "large community",
        ),
        ("password = \"\"", "announce.peer[0].password", "empty"),
        (
            long_password.as_str(),
            "announce.peer[0].password",
            "at most 80",
        ),
        (
            "password = \"a\"\npassword_file = \"k\"",
            "announce.peer[0].password_file",
            "not both",
        ),
        (
            "password_file = \"/nonexistent/bgp.key\"",
            "announce.peer[0].password_file",
            "cannot read /nonexistent/bgp.key",
        ),
    ];
    for (line, field, words) in cases {
        let e = load(&format!(
            "{NODE}{BGP}[[announce.peer]]\naddress = \"10.0.0.254\"\nas = 65000\n{line}\n"
        ))
        .expect_err(line);
        let text = e.to_string();
        assert!(
            text.contains(field) && text.contains(words),
            "{line}: {text}"
        );
    }
}

#[test]
fn passive_peers_and_where_they_connect() {
    let peer = "[[announce.peer]]\naddress = \"10.0.0.254\"\nas = 65000\n";
    let config = load(&format!(
        "{NODE}{BGP}listen = \"10.0.0.1\"\n{peer}passive = true\n"
    ))
    .expect("valid");
    let crate::announce::AnnounceConfig::Bgp(b) = config.announce else {
        panic!("bgp");
    };
    assert_eq!(b.listen, Some("10.0.0.1:179".parse().expect("addr")));
    assert!(b.peers[0].passive);
    let default = load(&format!("{NODE}{BGP}{peer}")).expect("valid");
    let crate::announce::AnnounceConfig::Bgp(b) = default.announce else {
        panic!("bgp");
    };
    assert!(!b.peers[0].passive && b.listen.is_none());
    for (text, words) in [
        ("listen = \"nope\"\n", "not an address"),
        ("listen = \"10.0.0.1:1179\"\n", "no peer is passive"),
    ] {
        let e = load(&format!("{NODE}{BGP}{text}{peer}")).expect_err(text);
        let e = e.to_string();
        assert!(e.contains("announce.listen") && e.contains(words), "{e}");
    }
}

#[test]
fn bfd_defaults_and_bad_timers_name_their_field() {
    let peer = "[[announce.peer]]\naddress = \"10.0.0.254\"\nas = 65000\n";
    let config = load(&format!("{NODE}{BGP}[announce.bfd]\n{peer}")).expect("valid");
    let crate::announce::AnnounceConfig::Bgp(b) = config.announce else {
        panic!("bgp");
    };
    assert_eq!(b.bfd, Some(crate::announce::bfd::Timers::default()));
    let timers = b.bfd.expect("on");
    assert_eq!(
        (
            timers.desired_min_tx,
            timers.required_min_rx,
            timers.multiplier
        ),
        (Duration::from_millis(50), Duration::from_millis(50), 3),
        "50 ms x 3 unless configured"
    );
    assert!(b.peers[0].bfd);
    let off = load(&format!("{NODE}{BGP}{peer}")).expect("valid");
    let crate::announce::AnnounceConfig::Bgp(b) = off.announce else {
        panic!("bgp");
    };
    assert_eq!(b.bfd, None, "off unless configured");
    let cases = [
        (
            "[announce.bfd]\ninterval = \"1ms\"\n",
            "announce.bfd.interval",
            "10ms to 60s",
        ),
        (
            "[announce.bfd]\nmin_rx = \"soon\"\n",
            "announce.bfd.min_rx",
            "soon",
        ),
        (
            "[announce.bfd]\nmultiplier = 0\n",
            "announce.bfd.multiplier",
            "1 to 255",
        ),
        (
            "[announce.bfd]\necho = true\n",
            "announce.bfd",
            "unknown field",
        ),
        (
            "graceful_restart = \"2h\"\n",
            "announce.graceful_restart",
            "1s to 4095s",
        ),
    ];
    for (text, field, words) in cases {
        let e = load(&format!("{NODE}{BGP}{text}{peer}")).expect_err(text);
        let t = e.to_string();
        assert!(t.contains(field) && t.contains(words), "{text}: {t}");
    }
    let e = load(&format!("{NODE}{BGP}{peer}bfd = true\n")).expect_err("no [announce.bfd]");
    assert!(e.to_string().contains("add an [announce.bfd]"), "{e}");
}

#[test]
fn listening_beyond_loopback_without_tls_needs_insecure() {
    let source = "[source.file]\npath = \"s.toml\"\n";
    let cluster = "[cluster]\nid = \"c\"\ndata_dir = \"d\"\nlisten = \"10.0.0.1:9461\"\nmember = [{ id = 1, address = \"10.0.0.1:9461\" }]\n";
    let err = load(&format!(
        "{NODE}{source}[admin]\nlisten = \"0.0.0.0:9443\"\n"
    ))
    .expect_err("an open admin port without TLS");
    let text = err.to_string();
    assert!(
        text.contains("admin.listen")
            && text.contains("without TLS")
            && text.contains("insecure = true"),
        "{text}"
    );
    let err = load(&format!("{NODE}{source}{cluster}")).expect_err("an open peer port without TLS");
    assert!(err.to_string().contains("cluster.listen"), "{err}");
    // Loopback is fine; beyond it, the operator says so.
    load(&format!("{NODE}{source}")).expect("loopback");
    let config = load(&format!(
        "[node]\nid = 1\ninsecure = true\n{source}[admin]\nlisten = \"0.0.0.0:9443\"\n{cluster}"
    ))
    .expect("insecure accepted");
    assert!(config.insecure);
}

#[test]
fn listener_limits_default_and_bounds() {
    let config = load(&format!("{NODE}[source.file]\npath = \"s.toml\"\n")).expect("valid");
    assert_eq!(config.limits, crate::listener::Limits::default());
    let config = load(
        "[node]\nid = 1\nmax_connections = 100\nmax_connections_per_source = 10\nfirst_bytes_timeout = \"2s\"\n[source.file]\npath = \"s.toml\"\n",
    )
    .expect("valid");
    assert_eq!(
        config.limits,
        crate::listener::Limits {
            max: 100,
            per_source: 10,
            first_bytes: Duration::from_secs(2)
        }
    );
    for (line, field) in [
        ("max_connections = 3", "node.max_connections"),
        (
            "max_connections_per_source = 0",
            "node.max_connections_per_source",
        ),
        (
            "max_connections = 100\nmax_connections_per_source = 200",
            "node.max_connections_per_source",
        ),
        ("first_bytes_timeout = \"10ms\"", "node.first_bytes_timeout"),
    ] {
        let e = load(&format!(
            "[node]\nid = 1\n{line}\n[source.file]\npath = \"s.toml\"\n"
        ))
        .expect_err(line);
        assert!(e.to_string().contains(field), "{line}: {e}");
    }
}

/// IPVS without a VIP interface and without managed networks would own
/// nothing it dumps: every repair re-sent the whole table and hand edits
/// were never repaired (issue 20). Refused, naming the way out.
#[test]
fn ipvs_vip_interface_cannot_be_the_loopback() {
    let e = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"ipvs\"\nvip_interface = \"lo\"\n"
    ))
    .expect_err("the loopback is refused");
    assert_eq!(e.field, "dataplane.vip_interface");
    assert!(e.message.contains("loopback"), "{e}");
}

/// One setting makes VIPs local (issue 25): `dataplane.vip_interface`,
/// whose default is the dataplane's ("lbvip0" with IPVS, "lo" with the
/// memory dataplane); the old `announce.vip_interface` is refused with the
/// way out, whatever its value.
#[test]
fn one_vip_interface_setting_and_the_old_one_is_refused_with_the_way_out() {
    let announce =
        "[announce]\nmode = \"l2\"\ninterface = \"eth0\"\nvip_ranges = [\"10.0.0.0/24\"]\n";
    let config = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n{announce}"
    ))
    .expect("valid");
    assert_eq!(config.dataplane.vip_interface(true), "lbvip0");
    assert_eq!(config.dataplane.vip_interface(false), "lo");
    let crate::announce::AnnounceConfig::L2(l2) = &config.announce else {
        panic!("l2: {:?}", config.announce);
    };
    assert_eq!(l2.vip_interface, None, "set when the dataplane is open");
    let config = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nvip_interface = \"vips\"\n{announce}"
    ))
    .expect("valid");
    assert_eq!(config.dataplane.vip_interface(false), "vips");
    for old in ["lo", "lbvip0", ""] {
        let e = load(&format!(
            "{NODE}[source.file]\npath = \"s.toml\"\n{announce}vip_interface = {old:?}\n"
        ))
        .expect_err("the old setting is refused");
        assert_eq!(e.field, "announce.vip_interface");
        assert!(
            e.message.contains("dataplane.vip_interface") && e.message.contains("delete"),
            "{e}"
        );
    }
    // `auto` may run IPVS: the loopback is refused there too.
    let e = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"auto\"\nvip_interface = \"lo\"\n"
    ))
    .expect_err("the loopback is refused");
    assert_eq!(e.field, "dataplane.vip_interface");
}

#[test]
fn ipvs_without_a_vip_interface_needs_managed_networks() {
    let base = format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"ipvs\"\nvip_interface = \"\"\n"
    );
    let e = load(&base).expect_err("no way to own services");
    assert_eq!(e.field, "dataplane.vip_interface");
    assert!(e.message.contains("managed_networks"), "{}", e.message);
    for fix in [
        "managed_networks = [\"10.96.0.0/12\"]",
        "own_whole_table = true",
    ] {
        let config = load(&format!("{base}{fix}\n")).expect(fix);
        assert!(config.dataplane.vip_interface(true).is_empty());
    }
    // The memory dataplane owns no kernel table: nothing to refuse.
    load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"memory\"\nvip_interface = \"\"\n"
    ))
    .expect("memory");
}

#[test]
fn udp_backends_drain_for_no_time_by_default() {
    let config = load(&format!("{NODE}[source.file]\npath = \"s.toml\"\n")).expect("valid");
    assert_eq!(config.dataplane.udp_drain_timeout, Duration::ZERO);
    assert_eq!(config.dataplane.drain_timeout, Duration::from_secs(30));
    let e = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nudp_drain_timeout = \"soon\"\n"
    ))
    .expect_err("bad duration");
    assert_eq!(e.field, "dataplane.udp_drain_timeout");
}

#[test]
fn rate_estimation_is_the_kernels_unless_set_and_a_bad_value_is_named() {
    let with = |line: &str| {
        load(&format!(
            "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\n{line}\n"
        ))
    };
    let default = load(&format!("{NODE}[source.file]\npath = \"s.toml\"\n")).expect("valid");
    assert_eq!(default.dataplane.rate_estimation, RateEstimation::Kernel);
    let off = with("rate_estimation = \"off\"").expect("off");
    assert_eq!(off.dataplane.rate_estimation, RateEstimation::Off);
    let e = with("rate_estimation = \"auto\"").expect_err("not a value");
    assert_eq!(e.field, "dataplane.rate_estimation");
    assert!(e.to_string().contains("\"auto\""), "{e}");
}

#[test]
fn connection_sync_is_off_unless_asked_and_leaves_the_flow_hand_over_on() {
    let announce =
        "[announce]\nmode = \"l2\"\ninterface = \"eth0\"\nvip_ranges = [\"10.0.0.0/24\"]\n";
    let config = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"ipvs\"\n{announce}"
    ))
    .expect("valid");
    assert_eq!(config.dataplane.connection_sync, None);
    let crate::announce::AnnounceConfig::L2(l2) = &config.announce else {
        panic!("l2: {:?}", config.announce);
    };
    assert!(l2.flow_handover);
    let config = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"ipvs\"\n[dataplane.connection_sync]\ninterface = \"eth1\"\n{announce}"
    ))
    .expect("valid");
    let sync = config.dataplane.connection_sync.expect("on");
    assert_eq!(sync.interface, "eth1");
    assert_eq!(sync.sync_id, 1);
    assert_eq!(sync.group, std::net::Ipv4Addr::new(224, 0, 0, 81));
    assert_eq!(sync.port, 8848);
    assert_eq!(sync.refresh, Duration::from_secs(2));
    let crate::announce::AnnounceConfig::L2(l2) = &config.announce else {
        panic!("l2: {:?}", config.announce);
    };
    // A connection opened just before a graceful move may not have
    // reached the new owner yet: the hand-over still carries those.
    assert!(l2.flow_handover);
}

#[test]
fn connection_sync_errors_name_the_field() {
    let with = |kind: &str, body: &str| {
        load(&format!(
            "{NODE}[source.file]\npath = \"s.toml\"\n[dataplane]\nkind = \"{kind}\"\n[dataplane.connection_sync]\n{body}"
        ))
        .expect_err("refused")
    };
    for (kind, body, field, says) in [
        (
            "memory",
            "interface = \"eth0\"\n",
            "dataplane.connection_sync",
            "needs kernel IPVS",
        ),
        (
            "ipvs",
            "interface = \"\"\n",
            "dataplane.connection_sync.interface",
            "not a valid interface",
        ),
        (
            "ipvs",
            "interface = \"eth0\"\nsync_id = 256\n",
            "dataplane.connection_sync.sync_id",
            "0-255",
        ),
        (
            "ipvs",
            "interface = \"eth0\"\ngroup = \"10.0.0.1\"\n",
            "dataplane.connection_sync.group",
            "not a multicast",
        ),
        (
            "ipvs",
            "interface = \"eth0\"\ngroup = \"x\"\n",
            "dataplane.connection_sync.group",
            "not an IPv4 multicast",
        ),
        (
            "ipvs",
            "interface = \"eth0\"\nport = 0\n",
            "dataplane.connection_sync.port",
            "not be 0",
        ),
        (
            "ipvs",
            "interface = \"eth0\"\nrefresh = \"500ms\"\n",
            "dataplane.connection_sync.refresh",
            "whole seconds",
        ),
    ] {
        let e = with(kind, body);
        assert_eq!(e.field, field, "{body}");
        assert!(e.to_string().contains(says), "{body}: {e}");
    }
}

#[test]
fn health_defaults_come_from_the_member_config_and_reach_the_annotation_translation() {
    let config = load(&format!(
        "{NODE}[source.kubernetes]\n[health]\ninterval = \"5s\"\ntimeout = \"2s\"\nfall = 2\n"
    ))
    .expect("valid");
    let want = crate::health::settings::Defaults {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        fall: 2,
        ..Default::default()
    };
    assert_eq!(config.health, want);
    let SourceConfig::Kubernetes(k) = config.source else {
        panic!("a kubernetes source");
    };
    assert_eq!(k.translate.health, want);
    // Without the section: the built-in defaults.
    let plain = load(&format!("{NODE}[source.kubernetes]\n")).expect("valid");
    assert_eq!(plain.health, crate::health::settings::Defaults::default());
    // A bad default names its field in the member config.
    let e = load(&format!(
        "{NODE}[source.kubernetes]\n[health]\ninterval = \"1s\"\ntimeout = \"2s\"\n"
    ))
    .expect_err("timeout above the interval");
    assert_eq!(e.field, "health.timeout");
    assert_eq!(e.file, Path::new("/etc/lb-node/member.toml"));
    let e = load(&format!(
        "{NODE}[source.kubernetes]\n[health]\ncolour = 1\n"
    ))
    .expect_err("unknown key");
    assert!(e.to_string().contains("colour"), "{e}");
}

#[test]
fn the_services_file_limit_defaults_to_16_mib_and_is_bounded() {
    let with = |extra: &str| {
        load(&format!(
            "{NODE}[source.file]\npath = \"services.toml\"\n{extra}"
        ))
    };
    let max = |config: Config| match config.source {
        SourceConfig::File(f) => f.max_bytes,
        SourceConfig::Kubernetes(_) => 0,
    };
    assert_eq!(max(with("").expect("valid")), 16 << 20);
    assert_eq!(max(with("max_size_mib = 64\n").expect("valid")), 64 << 20);
    for bad in ["max_size_mib = 0\n", "max_size_mib = 2048\n"] {
        let e = with(bad).expect_err(bad);
        assert_eq!(e.field, "source.file.max_size_mib", "{e}");
        assert!(e.to_string().contains("1 to 1024"), "{e}");
    }
}
