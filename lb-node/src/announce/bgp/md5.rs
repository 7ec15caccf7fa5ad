//! TCP MD5 signatures (RFC 2385) on a BGP session's socket.
//!
//! Owns the workspace's one call into libc without a safe wrapper:
//! `setsockopt(IPPROTO_TCP, TCP_MD5SIG)`. No safe socket crate (socket2,
//! nix, rustix) offers it, and most routers ask for a password, so the
//! workspace's `unsafe_code` is `deny` instead of `forbid` and this module
//! alone allows it (CONVENTIONS.md, rule 11: a small, documented exception).
//! The argument is built in safe code as the kernel's `struct tcp_md5sig`
//! bytes; the unsafe block only hands that buffer to the kernel.
//!
//! The kernel then signs every segment to that peer and drops every
//! segment from it without the right signature (a wrong password looks
//! like a peer that never answers, and the kernel counts
//! `TCPMD5Failure` / `TCPMD5NotFound` in `nstat`).
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

/// The longest key the kernel takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY: usize = 80;

/// A session's password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key of 1 to 80 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Key, String> {
        if bytes.is_empty() {
            return Err("is empty".into());
        }
        if bytes.len() > MAX_KEY {
            return Err(format!(
                "is {} bytes; the kernel takes at most {MAX_KEY}",
                bytes.len()
            ));
        }
        Ok(Key(bytes))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Signs the socket's segments to and from `peer` with `key`, or stops
/// signing them (`None`). On a listening socket it applies to the
/// connections it accepts from `peer`; set it before `connect` for an
/// outgoing one (the SYN is signed). Removing a key that is not there is
/// no error.
pub fn set(socket: &impl AsFd, peer: IpAddr, key: Option<&Key>) -> io::Result<()> {
    let v6_socket = socket2::SockRef::from(socket).domain()? == socket2::Domain::IPV6;
    let option = tcp_md5sig(peer, v6_socket, key.map_or(&[][..], |k| &k.0))?;
    let fd = socket.as_fd().as_raw_fd();
    let len = libc::socklen_t::try_from(option.len()).map_err(io::Error::other)?;
    // SAFETY: `fd` is a socket borrowed for the whole call; the kernel
    // reads `len` bytes from `option`, which owns exactly that many
    // initialised bytes and outlives the call; nothing is written back.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            option.as_ptr().cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        // Removing a key that was never set: nothing to do.
        e if key.is_none() && e.kind() == io::ErrorKind::NotFound => Ok(()),
        e => Err(e),
    }
}

/// `struct tcp_md5sig` (linux/tcp.h): the peer as a `sockaddr_storage`
/// (128 bytes), flags, prefix length, key length, interface index, and
/// the key padded to 80 bytes. An IPv4 peer of an IPv6 socket (a
/// dual-stack listener) is given IPv4-mapped, as it arrives.
fn tcp_md5sig(peer: IpAddr, v6_socket: bool, key: &[u8]) -> io::Result<Vec<u8>> {
    if key.len() > MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 key over 80 bytes",
        ));
    }
    let mut out = Vec::with_capacity(216);
    let peer = match peer {
        IpAddr::V4(v4) if v6_socket => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) if !v6_socket => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an IPv6 peer on an IPv4 socket",
                ));
            }
        },
        other => other,
    };
    match peer {
        IpAddr::V4(v4) => {
            // sockaddr_in: family (host order), port 0, address, zeros.
            out.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            // sockaddr_in6: family, port 0, flow info 0, address, scope 0.
            out.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&v6.octets());
            out.extend_from_slice(&0u32.to_ne_bytes());
        }
    }
    out.resize(128, 0);
    out.push(0); // flags: no prefix, no interface
    out.push(0); // prefix length (unused without the prefix flag)
    out.extend_from_slice(&(key.len() as u16).to_ne_bytes());
    out.extend_from_slice(&0i32.to_ne_bytes()); // interface index
    out.extend_from_slice(key);
    out.resize(128 + 8 + MAX_KEY, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn key(text: &str) -> Key {
        Key::new(text.as_bytes().to_vec()).expect("a valid key")
    }

    #[test]
    fn keys_are_bounded_and_never_printed() {
        assert!(Key::new(Vec::new()).is_err());
        assert!(
            Key::new(vec![b'x'; 81])
                .expect_err("too long")
                .contains("81 bytes")
        );
        assert!(Key::new(vec![b'x'; 80]).is_ok());
        assert_eq!(format!("{:?}", key("hunter2")), "Key(<redacted>)");
    }

    #[test]
    fn the_option_is_the_kernels_struct() {
        let o = tcp_md5sig("192.0.2.1".parse().expect("ip"), false, b"abc").expect("v4");
        assert_eq!(o.len(), 216);
        assert_eq!(&o[4..8], &[192, 0, 2, 1]);
        assert_eq!(u16::from_ne_bytes([o[130], o[131]]), 3);
        assert_eq!(&o[136..139], b"abc");
        let m = tcp_md5sig("192.0.2.1".parse().expect("ip"), true, b"abc").expect("mapped");
        assert_eq!(u16::from_ne_bytes([m[0], m[1]]), libc::AF_INET6 as u16);
        assert_eq!(
            &m[8..24],
            &"::ffff:192.0.2.1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets()
        );
        assert!(tcp_md5sig("2001:db8::1".parse().expect("ip"), false, b"k").is_err());
    }

    /// Opens a connection from an outgoing socket with `client` to a
    /// listener with `server` on loopback, and sends one byte through.
    async fn connects(client: Option<&Key>, server: Option<&Key>, v6: bool) -> bool {
        let any: std::net::SocketAddr = if v6 { "[::1]:0" } else { "127.0.0.1:0" }
            .parse()
            .expect("addr");
        let listener = tokio::net::TcpListener::bind(any).await.expect("listen");
        let at = listener.local_addr().expect("addr");
        set(&listener, at.ip(), server).expect("server key");
        let socket = if v6 {
            tokio::net::TcpSocket::new_v6()
        } else {
            tokio::net::TcpSocket::new_v4()
        }
        .expect("socket");
        set(&socket, at.ip(), client).expect("client key");
        let attempt = async {
            let mut out = socket.connect(at).await.ok()?;
            let (mut inc, _) = listener.accept().await.ok()?;
            out.write_all(b"x").await.ok()?;
            let mut b = [0u8; 1];
            inc.read_exact(&mut b).await.ok()?;
            Some(b[0] == b'x')
        };
        tokio::time::timeout(Duration::from_millis(1500), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// The kernel really signs and checks: the same key on both sides
    /// connects, a different key or a missing one does not.
    #[tokio::test]
    async fn the_kernel_drops_segments_without_the_right_signature() {
        for v6 in [false, true] {
            assert!(
                connects(Some(&key("s3cret")), Some(&key("s3cret")), v6).await,
                "same key, v6={v6}"
            );
            assert!(
                !connects(Some(&key("s3cret")), Some(&key("other")), v6).await,
                "wrong key, v6={v6}"
            );
            assert!(
                !connects(None, Some(&key("s3cret")), v6).await,
                "no key, v6={v6}"
            );
            assert!(connects(None, None, v6).await, "neither, v6={v6}");
        }
    }

    /// A dual-stack listener checks an IPv4 peer's signature too.
    #[tokio::test]
    async fn a_dual_stack_listener_checks_ipv4_peers() {
        let listener = tokio::net::TcpListener::bind("[::]:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        set(&listener, peer, Some(&key("k1"))).expect("key");
        for (k, ok) in [("k1", true), ("k2", false)] {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            set(&socket, peer, Some(&key(k))).expect("key");
            let r = tokio::time::timeout(
                Duration::from_millis(1500),
                socket.connect((peer, port).into()),
            )
            .await;
            assert_eq!(matches!(r, Ok(Ok(_))), ok, "key {k}");
        }
    }
}
