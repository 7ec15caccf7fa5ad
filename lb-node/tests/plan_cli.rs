//! `lb-node plan` on the example and on broken files: the table it prints,
//! and for every kind of mistake, a non-zero exit naming the field.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn plan(config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lb-node"))
        .args(["plan", "--config"])
        .arg(config)
        .output()
        .expect("lb-node runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A member configuration next to a services file with `services` in it.
fn with_services(services: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("lb-node.toml"),
        "[node]\nid = 1\n[source.file]\npath = \"services.toml\"\n",
    )
    .expect("write config");
    std::fs::write(dir.path().join("services.toml"), services).expect("write services");
    let config = dir.path().join("lb-node.toml");
    (dir, config)
}

#[test]
fn example_config_plans_the_example_table() {
    let (code, stdout, stderr) = plan(&repo().join("deploy/examples/standalone.toml"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "-A -t 192.0.2.10:80 -s wrr\n\
         -a -t 192.0.2.10:80 -r 198.51.100.11:8080 -m -w 3\n\
         -a -t 192.0.2.10:80 -r 198.51.100.12:8080 -m -w 1\n\
         -A --sctp-service 192.0.2.20:5060 -s sh -p 300\n\
         -a --sctp-service 192.0.2.20:5060 -r 192.0.2.101:5060 -g -w 1\n\
         -a --sctp-service 192.0.2.20:5060 -r 192.0.2.102:5060 -g -w 0\n\
         -A -u [2001:db8::53]:53 -s rr\n\
         -a -u [2001:db8::53]:53 -r [2001:db8:100::11]:53 -m -w 1\n\
         -a -u [2001:db8::53]:53 -r [2001:db8:100::12]:53 -m -w 1\n"
    );
}

/// Runs `plan` on a broken services file and returns its message, after
/// checking it failed as a configuration error with nothing on stdout.
fn refused(services: &str) -> String {
    let (_dir, config) = with_services(services);
    let (code, stdout, stderr) = plan(&config);
    assert_eq!(
        code, 2,
        "expected a configuration error, got {code}: {stdout}{stderr}"
    );
    assert!(
        stdout.is_empty(),
        "nothing may be planned from a broken file: {stdout}"
    );
    stderr
}

const GOOD: &str = "[[service]]\nname = \"web\"\nvip = \"192.0.2.1\"\nport = 80\n[[service.backend]]\naddress = \"10.0.0.1\"\n";

#[test]
fn bad_ip_names_the_field() {
    let err = refused(&GOOD.replace("192.0.2.1", "192.0.2.300"));
    assert!(
        err.contains(
            "service[0].vip (service \"web\"): \"192.0.2.300\" is not an IPv4 or IPv6 address"
        ),
        "{err}"
    );
    let err = refused(&GOOD.replace("10.0.0.1", "10.0.0"));
    assert!(
        err.contains("service[0].backend[0].address (service \"web\")"),
        "{err}"
    );
}

#[test]
fn port_out_of_range_names_the_field() {
    let err = refused(&GOOD.replace("port = 80", "port = 70000"));
    assert!(
        err.contains("service[0].port (service \"web\"): 70000 is not a port (1-65535)"),
        "{err}"
    );
    let err = refused(&format!("{GOOD}port = 0\n"));
    assert!(
        err.contains("service[0].backend[0].port (service \"web\"): 0 is not a port"),
        "{err}"
    );
}

#[test]
fn unknown_scheduler_names_the_field_and_the_choices() {
    let err = refused(&GOOD.replace("port = 80", "port = 80\nscheduler = \"fastest\""));
    assert!(err.contains("service[0].scheduler (service \"web\"): unknown scheduler \"fastest\"; expected one of: rr, wrr"), "{err}");
}

#[test]
fn duplicate_service_names_both() {
    let second = GOOD.replace("\"web\"", "\"web2\"");
    let err = refused(&format!("{GOOD}{second}"));
    assert!(
        err.contains("service[1].vip (service \"web2\"): duplicate service: service[0] already serves tcp/192.0.2.1:80"),
        "{err}"
    );
    let err = refused(&format!("{GOOD}{}", GOOD.replace("port = 80", "port = 81")));
    assert!(
        err.contains("service[1].name (service \"web\"): service[0] has the same name"),
        "{err}"
    );
}

#[test]
fn other_mistakes_name_the_field() {
    // A typo in a key is an error, not silently ignored.
    let err = refused(&GOOD.replace("port = 80", "port = 80\nsheduler = \"rr\""));
    assert!(
        err.contains("service[0].sheduler (service \"web\")") && err.contains("unknown field"),
        "{err}"
    );
    // The wrong type.
    let err = refused(&GOOD.replace("port = 80", "port = \"80\""));
    assert!(
        err.contains("service[0].port (service \"web\")") && err.contains("invalid type"),
        "{err}"
    );
    // Out-of-range weight, unknown state, a backend listed twice, a family mix.
    let err = refused(&format!("{GOOD}weight = 70000\n"));
    assert!(
        err.contains(
            "service[0].backend[0].weight (service \"web\"): 70000 is out of range 0-65535"
        ),
        "{err}"
    );
    let err = refused(&format!("{GOOD}state = \"up\"\n"));
    assert!(
        err.contains("service[0].backend[0].state (service \"web\"): unknown backend state \"up\""),
        "{err}"
    );
    let err = refused(&format!(
        "{GOOD}[[service.backend]]\naddress = \"10.0.0.1\"\n"
    ));
    assert!(
        err.contains("service[0].backend[1] (service \"web\")") && err.contains("listed twice"),
        "{err}"
    );
    let err = refused(&GOOD.replace("10.0.0.1", "fd00::1"));
    assert!(
        err.contains("service[0].backend[0].address (service \"web\")")
            && err.contains("address family"),
        "{err}"
    );
    let err = refused(&GOOD.replace("port = 80", "port = 80\npersistence_timeout = -5"));
    assert!(
        err.contains("service[0].persistence_timeout (service \"web\")"),
        "{err}"
    );
    let err = refused(&GOOD.replace("port = 80", "port = 80\nallowed_sources = [\"10.0.0.1/8\"]"));
    assert!(
        err.contains("service[0].allowed_sources[0] (service \"web\")")
            && err.contains("did you mean 10.0.0.0/8"),
        "{err}"
    );
    let err = refused(&GOOD.replace("port = 80", "port = 80\nfwmark = -1"));
    assert!(
        err.contains("service[0].fwmark (service \"web\"): -1 is out of range"),
        "{err}"
    );
    // One mark per address family.
    let second = GOOD
        .replace("\"web\"", "\"api\"")
        .replace("port = 80", "port = 81");
    let err = refused(&format!("{}{}", GOOD, second).replace("port = 8", "fwmark = 7\nport = 8"));
    assert!(
        err.contains("service[1].fwmark (service \"api\"): fwmark 7 is used by service[0] already"),
        "{err}"
    );
    // Not TOML at all.
    let err = refused("[[service]\n");
    assert!(err.contains("services.toml: not valid TOML"), "{err}");
}

#[test]
fn member_config_errors_name_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("lb-node.toml");
    for (text, expected) in [
        (
            "[node]\nid = 0\n[source.file]\npath = \"s.toml\"\n",
            "node.id: must be 1 or more",
        ),
        (
            "[node]\nid = 1\n[dataplane]\nkind = \"ebpf\"\n[source.file]\npath = \"s.toml\"\n",
            "dataplane.kind: unknown dataplane \"ebpf\"",
        ),
        (
            "[node]\nid = 1\n[dataplane]\nrepair_interval = \"soon\"\n[source.file]\npath = \"s.toml\"\n",
            "dataplane.repair_interval: \"soon\" is not a duration",
        ),
        (
            "[node]\nid = 1\n[source.file]\npath = \"s.toml\"\n[admin]\nlisten = \"localhost\"\n",
            "admin.listen: \"localhost\" is not an address:port",
        ),
        (
            "[node]\nid = 1\n",
            "lb-node.toml: source: TOML parse error at line 1, column 1; missing field `source`",
        ),
        (
            "[node]\nid = 1\n[source.file]\npath = \"missing.toml\"\n",
            "missing.toml: cannot read",
        ),
    ] {
        std::fs::write(&config, text).expect("write config");
        let (code, _, stderr) = plan(&config);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{text}: expected {expected:?} in {stderr:?}"
        );
    }
}

#[test]
fn cluster_examples_are_valid_and_plan_the_same_table() {
    let standalone = plan(&repo().join("deploy/examples/standalone.toml")).1;
    for i in 1..=3 {
        let (code, stdout, stderr) =
            plan(&repo().join(format!("deploy/examples/cluster/member-{i}.toml")));
        assert_eq!(code, 0, "member {i}: {stderr}");
        assert_eq!(
            stdout, standalone,
            "member {i} reads the same services file"
        );
    }
}

#[test]
fn cluster_config_errors_name_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("s.toml"), "").expect("services");
    let config = dir.path().join("lb-node.toml");
    let base = "[node]\nid = 1\n[source.file]\npath = \"s.toml\"\n[cluster]\nid = \"c\"\ndata_dir = \"d\"\nlisten = \"127.0.0.1:1\"\n";
    for (extra, expected) in [
        (
            "member = []\n",
            "cluster.member: a cluster needs its initial members",
        ),
        (
            "member = [{ id = 1, address = \"a:1\" }, { id = 1, address = \"b:1\" }]\n",
            "cluster.member[1].id: member 1 is listed twice",
        ),
        (
            "member = [{ id = 1, address = \"nohost\" }]\n",
            "cluster.member[0].address: \"nohost\" is not a host:port",
        ),
        (
            "election_ticks = 1\nmember = [{ id = 1, address = \"a:1\" }]\n",
            "cluster.election_ticks: must be more than heartbeat_ticks",
        ),
        (
            "tick = \"5s\"\nmember = [{ id = 1, address = \"a:1\" }]\n",
            "cluster.tick: must be between 10ms and 1s",
        ),
    ] {
        std::fs::write(&config, format!("{base}{extra}")).expect("write config");
        let (code, _, stderr) = plan(&config);
        assert_eq!(code, 2, "{extra}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{extra}: expected {expected:?} in {stderr:?}"
        );
    }
}
