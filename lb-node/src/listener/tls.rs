//! The TLS side of the admin and peer listeners: the handshake done by
//! the member itself, side by side and bounded, and every failed one
//! named by its cause in the log (at most once a second per cause) and in
//! `lb_tls_handshakes_failed_total{listener, reason}`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::warn;

use super::{GuardedListener, GuardedStream};

/// The name every member certificate carries and every client checks.
pub const TLS_SERVER_NAME: &str = "lb-node";

impl GuardedListener {
    /// Serves `router` on the admitted connections, with TLS when `tls`
    /// is given, until `shutdown`.
    pub async fn serve(
        self,
        router: tonic::transport::server::Router,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let stop = shutdown.cancelled_owned();
        match tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(self.into_tls_stream(tls), stop)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(self.into_stream(), stop)
                    .await
            }
        }
    }

    /// The admitted connections after their TLS handshake, for tonic's
    /// `serve_with_incoming_shutdown`. Handshakes run side by side (a slow
    /// client holds up nobody), each for at most `first_bytes`; one that
    /// fails is logged with the client's address and the reason in words
    /// (tonic, doing the handshake itself, only logs at debug level), and
    /// counted in `lb_tls_handshakes_failed_total{listener, reason}`.
    pub fn into_tls_stream(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> impl futures_util::Stream<Item = io::Result<tokio_rustls::server::TlsStream<GuardedStream>>>
    + Send
    + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let log = Arc::new(FailureLog::new(self.admission.name));
        let timeout = self.admission.limits.first_bytes;
        tokio::spawn(async move {
            let mut handshakes = tokio::task::JoinSet::new();
            loop {
                while handshakes.try_join_next().is_some() {}
                let (stream, from) = tokio::select! {
                    accepted = self.accept() => accepted,
                    // The server stopped: so does accepting.
                    () = tx.closed() => return,
                };
                let (acceptor, tx, log) = (acceptor.clone(), tx.clone(), log.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            if let Some((reason, words)) = handshake_failure(&e) {
                                log.failed(from, reason, &words);
                            }
                        }
                        Err(_) => log.failed(
                            from,
                            "timeout",
                            &format!("no complete handshake within {timeout:?}"),
                        ),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// At most one warning a second per listener and reason for failed
/// handshakes (a client retrying with the wrong certificate must not flood
/// the log); the ones left out are counted in the next.
#[derive(Debug)]
struct FailureLog {
    listener: &'static str,
    /// By reason: when one was last logged, and how many were left out
    /// since.
    last: Mutex<HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl FailureLog {
    fn new(listener: &'static str) -> Self {
        FailureLog {
            listener,
            last: Mutex::default(),
        }
    }

    fn failed(&self, from: SocketAddr, reason: &'static str, words: &str) {
        crate::metrics::METRICS
            .tls_handshakes_failed
            .with_label_values(&[self.listener, reason])
            .inc();
        let now = std::time::Instant::now();
        let left_out = {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            match last.get_mut(reason) {
                Some((at, left_out)) if now.duration_since(*at) < Duration::from_secs(1) => {
                    *left_out += 1;
                    return;
                }
                Some((at, left_out)) => {
                    *at = now;
                    std::mem::take(left_out)
                }
                None => {
                    last.insert(reason, (now, 0));
                    0
                }
            }
        };
        if left_out > 0 {
            warn!(listener = self.listener, client = %from, "TLS handshake failed: {words} ({left_out} more like it not logged)");
        } else {
            warn!(listener = self.listener, client = %from, "TLS handshake failed: {words}");
        }
    }
}

/// Why a TLS handshake failed: a metric label and words for the log, or
/// `None` when the connection went away without a TLS error (a port
/// scanner, an eviction, the first-bytes deadline: counted elsewhere).
pub fn handshake_failure(e: &io::Error) -> Option<(&'static str, String)> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let e = e.get_ref()?.downcast_ref::<E>()?;
    Some(match e {
        E::NoCertificatesPresented => (
            "no_certificate",
            "the client offered no certificate (lbctl needs --cert and --key; a member needs [tls] cert and key)".into(),
        ),
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => (
            "unknown_ca",
            "the client's certificate is not signed by the cluster's CA (tls.ca)".into(),
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => (
            "expired",
            "the client's certificate has expired".into(),
        ),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => (
            "not_yet_valid",
            "the client's certificate is not valid yet (is this machine's clock or the client's wrong?)".into(),
        ),
        E::InvalidCertificate(other) => (
            "bad_certificate",
            format!("the client's certificate was refused: {other:?}"),
        ),
        E::AlertReceived(
            alert @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::DecryptError),
        ) => (
            "refused_ours",
            format!(
                "the client refused this member's certificate (alert {alert:?}): it trusts another CA, or expects another name than \"{}\"",
                TLS_SERVER_NAME
            ),
        ),
        E::InvalidMessage(_) => (
            "not_tls",
            "the client did not speak TLS (plain text to a TLS port? lbctl needs --ca, --cert and --key)".into(),
        ),
        other => ("other", other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_handshakes_are_named_by_their_cause() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let named = |e: E| {
            handshake_failure(&io::Error::new(io::ErrorKind::InvalidData, e)).map(|(r, _)| r)
        };
        assert_eq!(named(E::NoCertificatesPresented), Some("no_certificate"));
        assert_eq!(
            named(E::InvalidCertificate(C::UnknownIssuer)),
            Some("unknown_ca")
        );
        assert_eq!(named(E::InvalidCertificate(C::Expired)), Some("expired"));
        assert_eq!(
            named(E::InvalidCertificate(C::NotValidYet)),
            Some("not_yet_valid")
        );
        assert_eq!(named(E::AlertReceived(A::UnknownCA)), Some("refused_ours"));
        assert_eq!(
            named(E::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            Some("not_tls")
        );
        // A connection that went away without a TLS error is not one.
        assert_eq!(
            handshake_failure(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            None
        );
    }
}
