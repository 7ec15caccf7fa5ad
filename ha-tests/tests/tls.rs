//! With [tls] configured, the admin and peer ports speak mutual TLS with
//! certificates from deploy/tls/make-certs.sh: the cluster forms and lbctl
//! works with a certificate of the cluster's CA, and every call without a
//! client certificate, or with one from another CA, is refused, on the
//! admin port and on the peer port alike; on the peer port a certificate
//! speaks only for the member it names.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ha_tests::{ClusterLayout, Member, binary, eventually};
use proto::peer::v1::Envelope;
use proto::peer::v1::peer_client::PeerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");

fn make_certs(dir: &Path, ids: &[&str]) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tls/make-certs.sh");
    let status = Command::new(script).arg(dir).args(ids).status()?;
    anyhow::ensure!(status.success(), "make-certs.sh failed");
    Ok(())
}

/// Three members in `dir` whose [tls] sections use the files of
/// `certs(id)` (make-certs.sh output), started; with their layout.
fn start_with_tls<'a>(
    dir: &Path,
    certs: impl Fn(u64) -> &'a std::path::PathBuf,
) -> anyhow::Result<(ClusterLayout, Vec<Member>)> {
    let layout = ClusterLayout::write(dir, 3, SERVICES, "tls-test")?;
    for id in 1..=3 {
        let path = layout.config(id);
        let mut config = std::fs::read_to_string(&path)?;
        config.push_str(&format!(
            "\n[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/member-{id}.pem\"\nkey = \"{0}/member-{id}-key.pem\"\n",
            certs(id).display()
        ));
        std::fs::write(&path, config)?;
    }
    let members = (1..=3)
        .map(|id| Member::start(&layout.config(id)))
        .collect::<anyhow::Result<_>>()?;
    Ok((layout, members))
}

fn lbctl(
    member: &Member,
    tls: Option<(&Path, &str)>,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(binary("lbctl")?);
    cmd.arg("--endpoint")
        .arg(format!("http://{}", member.admin));
    if let Some((dir, name)) = tls {
        // The CA of the cluster, the client certificate of `dir`.
        cmd.arg("--ca").arg(dir.join("ca.pem"));
        cmd.arg("--cert").arg(dir.join(format!("{name}.pem")));
        cmd.arg("--key").arg(dir.join(format!("{name}-key.pem")));
    }
    let out = cmd.args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A peer-port call with the given client identity (or none).
async fn peer_call(
    port: u16,
    ca: &Path,
    identity: Option<(&Path, &str)>,
    from: u64,
) -> Result<(), String> {
    peer_call_sized(port, ca, identity, from, 1).await
}

/// `peer_call` with a message of `size` bytes.
async fn peer_call_sized(
    port: u16,
    ca: &Path,
    identity: Option<(&Path, &str)>,
    from: u64,
    size: usize,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(ca).map_err(|e| e.to_string())?,
        ))
        .domain_name("member-1");
    if let Some((dir, name)) = identity {
        let cert = std::fs::read(dir.join(format!("{name}.pem"))).map_err(|e| e.to_string())?;
        let key = std::fs::read(dir.join(format!("{name}-key.pem"))).map_err(|e| e.to_string())?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(10));
    let channel = tokio::time::timeout(std::time::Duration::from_secs(30), channel.connect())
        .await
        .map_err(|_| format!("PEER CONNECT HUNG: not connected within 30 s (as {identity:?})"))?
        .map_err(|e| e.to_string())?;
    let envelope = Envelope {
        cluster_id: "tls-test".into(),
        from,
        to: 1,
        // Not a Raft message (an empty one would be a beat).
        message: vec![0xff; size],
        ..Default::default()
    };
    // Bounded: a call that never ends fails the test here, by name.
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        PeerClient::new(channel).send(tokio_stream::iter([envelope])),
    )
    .await
    .map_err(|_| format!("PEER CALL HUNG: no answer within 30 s (as {identity:?})"))?
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_of_the_cluster_ca_get_in() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let rogue = dir.path().join("rogue");
    make_certs(&certs, &["1", "2", "3"])?;
    make_certs(&rogue, &["1"])?;
    let (layout, members) = start_with_tls(dir.path(), |_| &certs)?;

    // The cluster forms over the mutual-TLS peer port, and lbctl with the
    // cluster's client certificate sees it.
    eventually(
        "a leader seen through mTLS",
        Duration::from_secs(20),
        || async {
            let (code, out, _) = lbctl(
                &members[0],
                Some((&certs, "lbctl")),
                &["-o", "json", "status"],
            )?;
            Ok((code == 0 && !out.contains("\"leader\":0")).then_some(()))
        },
    )
    .await?;
    let (code, out, err) = lbctl(&members[1], Some((&certs, "lbctl")), &["services", "web"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("198.51.100.11:8080"), "{out}");

    // Admin port: no certificate, plain text, or another CA's: refused.
    let (code, _, err) = lbctl(&members[0], None, &["status"])?;
    assert_ne!(code, 0, "plain text must not reach a TLS admin port: {err}");
    // The reason named, not just "transport error".
    assert!(
        err.contains("the member may speak TLS: give --ca, --cert and --key"),
        "{err}"
    );
    let (code, _, err) = lbctl(&members[0], Some((&rogue, "lbctl")), &["status"])?;
    assert_ne!(code, 0, "another CA's client must be refused: {err}");
    assert!(
        err.contains("the member's certificate is not signed by the CA given with --ca"),
        "{err}"
    );
    // (The rogue run also fails to verify the server: try the rogue
    // identity with the real CA too.)
    let mut mixed = Command::new(binary("lbctl")?);
    mixed
        .arg("--endpoint")
        .arg(format!("http://{}", members[0].admin))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(rogue.join("lbctl.pem"))
        .arg("--key")
        .arg(rogue.join("lbctl-key.pem"))
        .arg("status");
    let out = mixed.output()?;
    assert!(
        !out.status.success(),
        "a client certificate of another CA must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused by an alert naming it, or by a closed connection (TLS 1.3:
    // the server checks the client's certificate after the client is done).
    assert!(
        err.contains(
            "the member refused this client's certificate: it is not signed by the cluster's CA"
        ) || err.contains("most likely it refused this client's certificate"),
        "{err}"
    );

    // Peer port: the same.
    let port = layout.peer_ports[0];
    let no_cert = peer_call(port, &certs.join("ca.pem"), None, 2).await;
    assert!(
        no_cert.is_err(),
        "a peer without a certificate must be refused"
    );
    let wrong_ca = peer_call(port, &certs.join("ca.pem"), Some((&rogue, "member-1")), 1).await;
    assert!(
        wrong_ca.is_err(),
        "a peer with another CA's certificate must be refused"
    );
    // The member names each failed handshake in its log, with the
    // client's address (tonic alone logged them at debug level only).
    eventually(
        "the refusals named in member 1's log",
        Duration::from_secs(5),
        || async {
            let log = members[0].log();
            Ok([
                "TLS handshake failed: the client did not speak TLS",
                "TLS handshake failed: the client refused this member's certificate",
                "TLS handshake failed: the client's certificate is not signed by the cluster's CA",
                "TLS handshake failed: the client offered no certificate",
            ]
            .iter()
            .all(|words| log.contains(words))
            .then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}:\n{}", members[0].log()))?;
    // A real member certificate passes TLS and reaches the envelope checks,
    // which refuse this undecodable message by name: so the refusals above
    // were TLS's doing.
    let real = peer_call(port, &certs.join("ca.pem"), Some((&certs, "member-2")), 2).await;
    let real = real.expect_err("an undecodable raft message is refused by the envelope checks");
    assert!(
        real.contains("member 2 at 127.0.0.1"),
        "TLS let it through to the envelope checks: {real}"
    );

    // A certificate of the cluster's CA speaks only for the member it
    // names: member 3's certificate claiming to be member 2 is refused,
    // naming the name that is missing.
    let err = peer_call(port, &certs.join("ca.pem"), Some((&certs, "member-3")), 2)
        .await
        .expect_err("a certificate that does not name the sender is refused");
    assert!(
        err.contains("must carry DNS:member-2 to speak for member 2"),
        "member-3 speaking for member 2: {err}"
    );
    // One that names no other member (lbctl's) is refused before anything
    // is read: a 200 MB message costs the member no memory.
    let rss = |pid: u32| -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmHWM"))
    };
    let before = rss(members[0].pid())?;
    let err = peer_call_sized(
        port,
        &certs.join("ca.pem"),
        Some((&certs, "lbctl")),
        2,
        200 << 20,
    )
    .await
    .expect_err("lbctl's certificate is no member's");
    assert!(
        err.contains("names no other member of this cluster"),
        "lbctl's certificate on the peer port: {err}"
    );
    let after = rss(members[0].pid())?;
    assert!(
        after < before + 50 * 1024,
        "the member's peak memory rose from {before} kB to {after} kB"
    );

    // Nothing of that disturbed the cluster.
    let (code, out, _) = lbctl(&members[2], Some((&certs, "lbctl")), &["status"])?;
    assert_eq!(code, 0);
    assert!(out.contains("leader "), "{out}");
    Ok(())
}

/// A member given another CA's certificates: both sides of each failed
/// dial say why in their logs, the member dialing (the other's certificate
/// is not of its CA) and the member dialed (its certificate was refused),
/// each cause once, not at every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_ca_is_named_on_both_sides() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let rogue = dir.path().join("rogue");
    make_certs(&certs, &["1", "2"])?;
    make_certs(&rogue, &["3"])?;
    let (_layout, members) =
        start_with_tls(dir.path(), |id| if id == 3 { &rogue } else { &certs })?;
    eventually(
        "each side of a failed dial named in the logs",
        Duration::from_secs(20),
        || async {
            let (one, three) = (members[0].log(), members[2].log());
            Ok((three.contains(
                "cannot connect to peer: member 1's certificate is not signed by the cluster's CA",
            ) && one.contains(
                "cannot connect to peer: member 3's certificate is not signed by the cluster's CA",
            ) && one
                .contains("TLS handshake failed: the client refused this member's certificate")
                && three.contains(
                    "TLS handshake failed: the client refused this member's certificate",
                ))
            .then_some(()))
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nmember 1:\n{}\nmember 3:\n{}",
            members[0].log(),
            members[2].log()
        )
    })?;
    // Retried every 2 s at most, warned of once (within this minute).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warned = members[2]
        .log()
        .matches("cannot connect to peer: member 1's certificate")
        .count();
    assert_eq!(warned, 1, "{}", members[2].log());
    Ok(())
}

/// `lb-node plan` with a member config of `dir` whose [tls] section is
/// `tls`: its exit code and standard error.
fn plan_with_tls(dir: &Path, tls: &str) -> anyhow::Result<(Option<i32>, String)> {
    std::fs::write(dir.join("s.toml"), "")?;
    let config = dir.join("lb-node.toml");
    std::fs::write(
        &config,
        format!("[node]\nid = 1\n[source.file]\npath = \"s.toml\"\n[tls]\n{tls}"),
    )?;
    let out = Command::new(binary("lb-node")?)
        .args(["plan", "--config"])
        .arg(&config)
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn a_missing_certificate_file_names_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (code, err) = plan_with_tls(
        dir.path(),
        "ca = \"nope.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    )?;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls.ca: cannot read") && err.contains("nope.pem"),
        "{err}"
    );
    Ok(())
}

/// A key that is not the certificate's (another member's) is refused at
/// start naming tls.key, with exit status 2 (it used to stop the member
/// later with "transport error: keys may not be consistent", exit 1).
#[test]
fn a_key_of_another_certificate_names_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    make_certs(dir.path(), &["1", "2"])?;
    let tls = "ca = \"ca.pem\"\ncert = \"member-1.pem\"\nkey = \"member-2-key.pem\"\n";
    let (code, err) = plan_with_tls(dir.path(), tls)?;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tls.key: does not belong to the certificate in tls.cert"),
        "{err}"
    );
    // Not a key at all.
    std::fs::write(
        dir.path().join("member-2-key.pem"),
        "-----BEGIN NOTHING-----\n",
    )?;
    let (code, err) = plan_with_tls(dir.path(), tls)?;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls.key: "), "{err}");
    Ok(())
}
