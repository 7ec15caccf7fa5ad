//! A small DNS server and client for the cluster lab's kube-dns: A records
//! only, over UDP and TCP (RFC 1035; TCP messages carry a two-byte length).
//! The server answers the names it was given and NXDOMAIN for others; the
//! client asks one question and returns the addresses.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const NXDOMAIN: u16 = 3;

/// A query for `name`'s A records, with message id `id`.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // recursion desired
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len().min(63) as u8);
        m.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    m.push(0);
    m.extend_from_slice(&TYPE_A.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m
}

/// The question of a query: (id, name, type, the question's bytes).
fn question(m: &[u8]) -> Option<(u16, String, u16, &[u8])> {
    if m.len() < 12 || u16::from_be_bytes([m[4], m[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*m.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(m.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
    m.get(i + 3)?;
    Some((
        u16::from_be_bytes([m[0], m[1]]),
        labels.join("."),
        qtype,
        &m[12..i + 4],
    ))
}

/// The answer to `request` from `zone`: the A record, or NXDOMAIN (no
/// answer for other types of a known name). None for what is not a query.
pub fn answer(request: &[u8], zone: &BTreeMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let (id, name, qtype, q) = question(request)?;
    let found = zone.get(&name);
    let rcode = if found.is_some() { 0 } else { NXDOMAIN };
    let answers = u16::from(found.is_some() && qtype == TYPE_A);
    let mut m = Vec::with_capacity(q.len() + 28);
    m.extend_from_slice(&id.to_be_bytes());
    // Response, authoritative, recursion desired and available.
    m.extend_from_slice(&(0x8580 | rcode).to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&answers.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(q);
    if let (Some(ip), 1) = (found, answers) {
        m.extend_from_slice(&[0xc0, 12]); // the question's name
        m.extend_from_slice(&TYPE_A.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&30u32.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&ip.octets());
    }
    Some(m)
}

/// The A records of an answer to query `id`; an error for NXDOMAIN or a
/// malformed answer.
pub fn parse_answer(id: u16, m: &[u8]) -> anyhow::Result<Vec<Ipv4Addr>> {
    if m.len() < 12 || u16::from_be_bytes([m[0], m[1]]) != id {
        bail!("not the answer to query {id}");
    }
    let flags = u16::from_be_bytes([m[2], m[3]]);
    if flags & 0x8000 == 0 {
        bail!("not an answer");
    }
    if flags & 0xf != 0 {
        bail!("rcode {}", flags & 0xf);
    }
    let (_, _, _, q) = question(m).context("no question in the answer")?;
    let mut i = 12 + q.len();
    let count = u16::from_be_bytes([m[6], m[7]]);
    let mut out = Vec::new();
    for _ in 0..count {
        // A compressed name (pointer) or labels.
        loop {
            let b = *m.get(i).context("truncated answer")?;
            if b & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            i += 1 + usize::from(b);
            if b == 0 {
                break;
            }
        }
        let head = m.get(i..i + 10).context("truncated record")?;
        let rtype = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[8], head[9]]));
        let data = m
            .get(i + 10..i + 10 + len)
            .context("truncated record data")?;
        if rtype == TYPE_A && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Ok(out)
}

/// One lookup over UDP: `name`'s addresses from `server`, within
/// `timeout`.
pub async fn lookup_udp(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Ipv4Addr>> {
    let id = rand_id();
    tokio::time::timeout(timeout, async {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        socket.connect(server).await?;
        socket.send(&query(id, name)).await?;
        let mut buf = [0u8; 512];
        loop {
            let n = socket.recv(&mut buf).await?;
            // A late answer to an earlier query is not this one's.
            if let Ok(addresses) = parse_answer(id, &buf[..n]) {
                return Ok(addresses);
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer over UDP within {timeout:?}"))?
}

/// One lookup over TCP (a new connection).
pub async fn lookup_tcp(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Ipv4Addr>> {
    let id = rand_id();
    tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        let q = query(id, name);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut m).await?;
        parse_answer(id, &m)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer over TCP within {timeout:?}"))?
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos()) as u16;
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919) ^ seed
}

/// Serves `zone` on `addr` over UDP and TCP until the process ends.
pub async fn serve(addr: SocketAddr, zone: BTreeMap<String, Ipv4Addr>) -> anyhow::Result<()> {
    let zone = std::sync::Arc::new(zone);
    let udp = tokio::net::UdpSocket::bind(addr)
        .await
        .with_context(|| format!("bind udp {addr}"))?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind tcp {addr}"))?;
    let tcp_zone = zone.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            let zone = tcp_zone.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut m).await.is_err() {
                        return;
                    }
                    let Some(a) = answer(&m, &zone) else { return };
                    let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&a);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = udp.recv_from(&mut buf).await?;
        if let Some(a) = answer(&buf[..n], &zone) {
            let _ = udp.send_to(&a, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_name_is_answered_and_an_unknown_one_is_nxdomain() {
        let zone = BTreeMap::from([(
            "web.default.svc.cluster.local".to_owned(),
            Ipv4Addr::new(10, 96, 0, 20),
        )]);
        let q = query(7, "Web.default.svc.cluster.local.");
        let a = answer(&q, &zone).expect("a query");
        assert_eq!(
            parse_answer(7, &a).expect("answered"),
            vec![Ipv4Addr::new(10, 96, 0, 20)]
        );
        assert!(parse_answer(8, &a).is_err(), "another query's answer");
        let a = answer(&query(9, "nope.default.svc.cluster.local"), &zone).expect("a query");
        assert!(
            parse_answer(9, &a)
                .expect_err("nxdomain")
                .to_string()
                .contains("rcode 3")
        );
        assert_eq!(answer(&[1, 2, 3], &zone), None, "garbage is not answered");
    }
}
