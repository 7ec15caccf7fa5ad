//! The probes: one attempt each, bounded by the check's timeout, reading at
//! most `MAX_ANSWER` bytes, so a hostile or broken backend (garbage, an
//! endless body, a slow answer) costs at most the timeout and a bounded
//! buffer. Probes go only to the backends of the table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::model::ProbeKind;

/// The most of an answer a probe reads (HTTP head and body, a UDP reply).
pub const MAX_ANSWER: usize = 64 * 1024;

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub latency: Duration,
    /// What was seen ("200", "connection refused", "timed out after 1s");
    /// borrowed when it is always the same, as a TCP check's "connected",
    /// so the common probe allocates nothing for it.
    pub detail: std::borrow::Cow<'static, str>,
}

/// Probes `to` once.
pub async fn probe(kind: &ProbeKind, to: SocketAddr, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let result = match kind {
        // The common check, the most frequent probe: its future is small,
        // so it is not boxed, and its answer is a constant.
        ProbeKind::Tcp => tokio::time::timeout(timeout, connect(to))
            .await
            .map(|r| r.map(|()| "connected".into()).map_err(Into::into)),
        // Boxed: the attempt's future is as large as its largest kind
        // (TLS, gRPC), and a probe task waits between probes holding this
        // future's frame; boxed, that frame is a pointer, and the
        // attempt's memory is only held while it runs.
        _ => tokio::time::timeout(timeout, Box::pin(attempt(kind, to, timeout)))
            .await
            .map(|r| r.map(Into::into).map_err(Into::into)),
    };
    let (ok, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(why)) => (false, why),
        Err(_) => (false, format!("no answer within {timeout:?}").into()),
    };
    Outcome {
        ok,
        latency: started.elapsed(),
        detail,
    }
}

/// A TCP check: connected, then closed by a reset.
async fn connect(to: SocketAddr) -> Result<(), String> {
    let s = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| e.to_string())?;
    abort_on_close(&s);
    Ok(())
}

async fn attempt(kind: &ProbeKind, to: SocketAddr, timeout: Duration) -> Result<String, String> {
    match kind {
        ProbeKind::Tcp => connect(to).await.map(|()| "connected".into()),
        ProbeKind::Http {
            tls,
            method,
            path,
            host,
            expect_status,
            expect_body,
        } => {
            let stream = tokio::net::TcpStream::connect(to)
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            abort_on_close(&stream);
            let host = if host.is_empty() {
                crate::model::SocketText(to.ip(), to.port()).to_string()
            } else {
                host.clone()
            };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-node-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            let answer = if *tls {
                let name = rustls_pki_types::ServerName::try_from(
                    host.split(':').next().unwrap_or("").to_owned(),
                )
                .unwrap_or_else(|_| rustls_pki_types::ServerName::IpAddress(to.ip().into()));
                let config = tls_config().ok_or_else(|| "TLS is not available".to_owned())?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                exchange(tls, request.as_bytes(), |a| {
                    http_complete(a, expect_body.as_deref())
                })
                .await?
            } else {
                exchange(stream, request.as_bytes(), |a| {
                    http_complete(a, expect_body.as_deref())
                })
                .await?
            };
            judge_http(&answer, expect_status, expect_body.as_deref())
        }
        ProbeKind::Udp { send, expect } => {
            let local: SocketAddr = if to.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = tokio::net::UdpSocket::bind(local)
                .await
                .map_err(|e| e.to_string())?;
            socket.connect(to).await.map_err(|e| e.to_string())?;
            socket.send(send).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; MAX_ANSWER];
            // A port unreachable comes back as an error on the connected
            // socket: refused at once, as TCP is.
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            let answer = &buf[..n];
            if expect.is_empty() || contains(answer, expect) {
                Ok(format!("{n} bytes"))
            } else {
                Err(format!("{n} bytes without the expected answer"))
            }
        }
        ProbeKind::Grpc { service } => {
            use proto::grpc_health::v1 as pb;
            let endpoint = tonic::transport::Endpoint::from_shared(format!(
                "http://{}",
                crate::model::SocketText(to.ip(), to.port())
            ))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout);
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            let answer = pb::health_client::HealthClient::new(channel)
                .check(pb::HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            match pb::health_check_response::ServingStatus::try_from(answer.status) {
                Ok(pb::health_check_response::ServingStatus::Serving) => Ok("SERVING".into()),
                Ok(other) => Err(other.as_str_name().to_owned()),
                Err(_) => Err(format!("status {}", answer.status)),
            }
        }
    }
}

/// A probe's connection ends with a reset, not a FIN exchange (as
/// HAProxy's checks do): no TIME_WAIT socket per probe on this member (at
/// 10,000 probes a second, 600,000 of them), no half-closed socket left on
/// the backend.
fn abort_on_close(s: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Sends the request and reads the answer until it is complete for
/// judging (`complete`), the peer closes, or `MAX_ANSWER` bytes came.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    complete: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String> {
    s.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: what came counts.
            Err(_) if !answer.is_empty() => 0,
            Err(e) => return Err(e.to_string()),
        };
        if n == 0 {
            break;
        }
        let room = MAX_ANSWER - answer.len();
        answer.extend_from_slice(&buf[..n.min(room)]);
        if answer.len() >= MAX_ANSWER || complete(&answer) {
            break;
        }
    }
    Ok(answer)
}

/// Whether an HTTP answer read so far can be judged: its head is complete
/// and either no body is asked for, the body holds what is asked for, or
/// the body is complete by its Content-Length (without one, or chunked,
/// the answer ends when the server closes).
fn http_complete(answer: &[u8], body: Option<&str>) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Some(want) = body else { return true };
    let body = &answer[head_end + 4..];
    if contains(body, want.as_bytes()) {
        return true;
    }
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// Whether an HTTP answer means up: its status is expected (200-399 when
/// none is given) and, if asked, the body (what of it was read) holds the
/// text.
fn judge_http(answer: &[u8], expect_status: &[u16], body: Option<&str>) -> Result<String, String> {
    let line_end = answer
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(|| "no HTTP status line".to_owned())?;
    let line = String::from_utf8_lossy(&answer[..line_end]);
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP status line: {:?}", truncate(&line)))?;
    let expected = if expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        expect_status.contains(&status)
    };
    if !expected {
        return Err(format!("status {status}"));
    }
    if let Some(want) = body {
        let start = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |p| p + 4);
        if !contains(&answer[start..], want.as_bytes()) {
            return Err(format!(
                "status {status}, body without {:?}",
                truncate(want)
            ));
        }
    }
    Ok(format!("status {status}"))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// TLS for HTTPS probes: the certificate is not verified (a probe asks
/// whether the backend answers, as keepalived's SSL_GET does; backends
/// often serve certificates for names, not their addresses). `None` if the
/// crypto provider supports no protocol version (then HTTPS probes fail).
fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .ok()
                .map(|b| {
                    Arc::new(
                        b.dangerous()
                            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                            .with_no_client_auth(),
                    )
                })
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_judged_by_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(judge_http(ok, &[], None).is_ok());
        assert!(judge_http(ok, &[], Some("ok")).is_ok());
        assert!(judge_http(ok, &[], Some("ready")).is_err());
        assert!(judge_http(ok, &[204], None).is_err());
        assert!(judge_http(b"HTTP/1.0 503 Busy\r\n\r\n", &[], None).is_err());
        assert!(judge_http(b"HTTP/1.1 301 Moved\r\n\r\n", &[], None).is_ok());
        assert!(judge_http(b"garbage\r\n", &[], None).is_err());
        assert!(judge_http(b"no line end", &[], None).is_err());
        assert!(judge_http(b"SSH-2.0-OpenSSH 200\r\n", &[], None).is_err());
    }

    async fn server(answer: &'static [u8], hold: Duration) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test");
        let at = l.local_addr().expect("test");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(answer).await;
                    tokio::time::sleep(hold).await;
                });
            }
        });
        at
    }

    fn http(body: Option<&str>) -> ProbeKind {
        ProbeKind::Http {
            tls: false,
            method: "GET".into(),
            path: "/healthz".into(),
            host: String::new(),
            expect_status: vec![],
            expect_body: body.map(str::to_owned),
        }
    }

    #[test]
    fn an_answer_is_complete_at_its_head_or_its_length() {
        assert!(!http_complete(b"HTTP/1.1 200 OK\r\n", None));
        assert!(http_complete(b"HTTP/1.1 200 OK\r\n\r\n", None));
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab";
        assert!(!http_complete(partial, Some("ok")));
        assert!(http_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde",
            Some("ok")
        ));
        assert!(http_complete(b"HTTP/1.1 200 OK\r\n\r\nall ok", Some("ok")));
    }

    #[tokio::test]
    async fn a_server_that_keeps_the_connection_open_is_judged_by_its_answer() {
        let at = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Duration::from_secs(30),
        )
        .await;
        let t = Duration::from_millis(500);
        assert!(probe(&http(None), at, t).await.ok);
        assert!(probe(&http(Some("ok")), at, t).await.ok);
    }

    #[tokio::test]
    async fn a_backend_that_never_finishes_costs_the_timeout_and_no_more() {
        // Answers a status line and then holds the connection open.
        let at = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial",
            Duration::from_secs(30),
        )
        .await;
        let t = Duration::from_millis(300);
        let o = probe(&http(Some("never there")), at, t).await;
        assert!(!o.ok, "{o:?}");
        assert!(o.latency < Duration::from_secs(2), "{o:?}");
        assert!(o.detail.contains("no answer within"), "{o:?}");
    }

    #[tokio::test]
    async fn a_good_answer_a_refusal_and_garbage() {
        let good = server(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall ok",
            Duration::ZERO,
        )
        .await;
        let t = Duration::from_secs(2);
        assert!(probe(&http(Some("all ok")), good, t).await.ok);
        assert!(probe(&ProbeKind::Tcp, good, t).await.ok);
        let garbage = server(b"\x00\x01\x02 garbage", Duration::ZERO).await;
        assert!(!probe(&http(None), garbage, t).await.ok);
        // A port nobody listens on: refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("test");
            l.local_addr().expect("test")
        };
        let o = probe(&ProbeKind::Tcp, closed, t).await;
        assert!(!o.ok && o.detail.contains("refused"), "{o:?}");
    }

    #[tokio::test]
    async fn udp_needs_the_expected_answer() {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("test");
        let at = s.local_addr().expect("test");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&answer, from).await;
            }
        });
        let t = Duration::from_secs(2);
        let kind = |expect: &[u8]| ProbeKind::Udp {
            send: b"ping".to_vec(),
            expect: expect.to_vec(),
        };
        assert!(probe(&kind(b"re:ping"), at, t).await.ok);
        assert!(!probe(&kind(b"pong"), at, t).await.ok);
    }

    /// A gRPC server of grpc.health.v1 answering `status` for every
    /// service.
    async fn grpc_server(status: i32) -> SocketAddr {
        use proto::grpc_health::v1 as pb;
        struct Answer(i32);
        #[tonic::async_trait]
        impl pb::health_server::Health for Answer {
            async fn check(
                &self,
                _request: tonic::Request<pb::HealthCheckRequest>,
            ) -> Result<tonic::Response<pb::HealthCheckResponse>, tonic::Status> {
                Ok(tonic::Response::new(pb::HealthCheckResponse {
                    status: self.0,
                }))
            }
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test");
        let at = l.local_addr().expect("test");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::health_server::HealthServer::new(Answer(status)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        at
    }

    #[tokio::test]
    async fn grpc_health_must_answer_serving() {
        use proto::grpc_health::v1::health_check_response::ServingStatus;
        let kind = ProbeKind::Grpc {
            service: "shop".into(),
        };
        let t = Duration::from_secs(2);
        let serving = grpc_server(ServingStatus::Serving as i32).await;
        let o = probe(&kind, serving, t).await;
        assert!(o.ok, "{o:?}");
        let not = grpc_server(ServingStatus::NotServing as i32).await;
        let o = probe(&kind, not, t).await;
        assert!(!o.ok && o.detail.contains("NOT_SERVING"), "{o:?}");
        // Plain HTTP is not gRPC.
        let http = server(b"HTTP/1.1 200 OK\r\n\r\n", Duration::ZERO).await;
        assert!(!probe(&kind, http, t).await.ok);
    }

    #[tokio::test]
    async fn https_is_judged_like_http_over_a_self_signed_certificate() {
        use rustls_pki_types::pem::PemObject as _;
        let dir = tempfile::tempdir().expect("test");
        let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=backend.test",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&cert)
            .expect("test")
            .collect::<Result<_, _>>()
            .expect("test");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).expect("test");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("test")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("test");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test");
        let at = l.local_addr().expect("test");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let mut buf = [0u8; 1024];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let kind = |body: &str| ProbeKind::Http {
            tls: true,
            method: "GET".into(),
            path: "/healthz".into(),
            host: "backend.test".into(),
            expect_status: vec![200],
            expect_body: Some(body.into()),
        };
        let t = Duration::from_secs(2);
        let o = probe(&kind("ready"), at, t).await;
        assert!(o.ok, "{o:?}");
        assert!(!probe(&kind("other"), at, t).await.ok);
        // The same server spoken to in plain HTTP: not an HTTP answer.
        assert!(!probe(&http(None), at, t).await.ok);
    }
}
