//! Connecting to a member, and why a connection or call failed in words
//! (TLS causes named).

use std::time::Duration;

use tonic::transport::Channel;

pub(crate) async fn connect(
    endpoint: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    let tls_on = tls.is_some();
    let url = match (&tls, endpoint.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => endpoint.to_owned(),
    };
    let mut channel = Channel::from_shared(url)
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        channel = channel.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    channel.connect().await.map_err(|e| explain(&e, tls_on))
}

/// A failure in words: every cause in its chain, and for the TLS ones the
/// likely reason first ("transport error" alone says nothing).
fn explain(e: &(dyn std::error::Error + 'static), tls_on: bool) -> String {
    explain_chain(e.to_string(), e.source(), tls_on)
}

/// A call's failure in words, as `explain` (a status's own text is long:
/// its message stands for it).
pub(crate) fn explain_status(status: &tonic::Status, tls_on: bool) -> String {
    explain_chain(
        status.message().to_owned(),
        std::error::Error::source(status),
        tls_on,
    )
}

fn explain_chain(
    first: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
    tls_on: bool,
) -> String {
    let mut chain = vec![first];
    while let Some(s) = source {
        let text = s.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        source = s.source();
    }
    let all = chain.join(": ");
    match tls_reason(&all, tls_on) {
        Some(reason) => format!("{reason} ({all})"),
        None => all,
    }
}

/// The reason behind a TLS failure, from the words of its causes.
fn tls_reason(text: &str, tls_on: bool) -> Option<&'static str> {
    let t = text.to_ascii_lowercase().replace([' ', '_'], "");
    let has = |needle: &str| t.contains(needle);
    Some(if has("unknownissuer") || has("badsignature") {
        "the member's certificate is not signed by the CA given with --ca"
    } else if has("notvalidforname") || has("notvalidforcontext") {
        "the member's certificate does not name \"lb-node\", the name lbctl checks"
    } else if has("expired") || has("notvalidyet") {
        "a certificate is expired or not valid yet (check the dates and the clocks)"
    } else if has("certificaterequired") {
        "the member requires a client certificate: give --ca, --cert and --key"
    } else if has("unknownca") || has("badcertificate") || has("decrypterror") {
        "the member refused this client's certificate: it is not signed by the cluster's CA"
    } else if tls_on && (has("connectionclosed") || has("brokenpipe") || has("connectionreset")) {
        "the member closed the connection after the TLS handshake: most likely it refused this client's certificate (not signed by the cluster's CA)"
    } else if tls_on && (has("invalidcontenttype") || has("corruptmessage")) {
        "the member speaks plain HTTP/2 (it has no [tls]): leave out --ca, --cert and --key"
    } else if !tls_on
        && (has("connectionreset") || has("brokenpipe") || has("frameheader") || has("http2error"))
    {
        "the member may speak TLS: give --ca, --cert and --key"
    } else {
        return None;
    })
}
