//! A health check as an operator writes it (`[service.health_check]` in
//! the services file; docs in `deploy/examples/services.toml`), checked
//! field by field into the model's `HealthCheck`.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::model::{HealthCheck, OnDown, ProbeKind};

/// Defaults of a check's timing when the file leaves them out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Half the interval: a probe that times out is also retried after
/// half an interval (`Machine::next_in`), so a backend that stops
/// answering is down within about 1.5 s of its first failed probe.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// tcp, http, https, udp, grpc.
    kind: String,
    port: Option<i64>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    /// drain (the default) or remove.
    on_down: Option<String>,
    // http, https
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    expect_status: Vec<i64>,
    expect_body: Option<String>,
    // udp: text, or hex with the `_hex` forms.
    send: Option<String>,
    send_hex: Option<String>,
    expect: Option<String>,
    expect_hex: Option<String>,
    // grpc
    grpc_service: Option<String>,
}

fn hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// Parses a check written inline, as in a Kubernetes annotation: the
/// fields of `[service.health_check]` as a TOML inline table's contents,
/// `kind = "http", path = "/healthz", interval = "2s"`. The error names
/// the field.
pub fn parse_inline(text: &str) -> Result<HealthCheck, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        check: RawHealthCheck,
    }
    let wrapped: Wrapper = toml::from_str(&format!("check = {{ {text} }}")).map_err(|e| {
        format!(
            "not fields like kind = \"http\", path = \"/\": {}",
            e.message()
        )
    })?;
    check(wrapped.check, &|field, message| ConfigError {
        file: std::path::PathBuf::new(),
        field: field.to_owned(),
        service: None,
        message,
    })
    .map_err(|e| format!("{}: {}", e.field, e.message))
}

/// Checks a raw check; `err(field, message)` names the field in the file
/// (`health_check.` is prefixed here).
pub fn check(
    raw: RawHealthCheck,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<HealthCheck, ConfigError> {
    let e = |f: &str, m: String| err(&format!("health_check.{f}"), m);
    let only_for = |f: &str, set: bool, kinds: &str| -> Result<(), ConfigError> {
        if set {
            Err(e(f, format!("applies only to kind {kinds}")))
        } else {
            Ok(())
        }
    };
    let is_http = matches!(raw.kind.as_str(), "http" | "https");
    if !is_http {
        only_for("method", raw.method.is_some(), "http or https")?;
        only_for("path", raw.path.is_some(), "http or https")?;
        only_for("host", raw.host.is_some(), "http or https")?;
        only_for(
            "expect_status",
            !raw.expect_status.is_empty(),
            "http or https",
        )?;
        only_for("expect_body", raw.expect_body.is_some(), "http or https")?;
    }
    if raw.kind != "udp" {
        for (f, set) in [
            ("send", raw.send.is_some()),
            ("send_hex", raw.send_hex.is_some()),
            ("expect", raw.expect.is_some()),
            ("expect_hex", raw.expect_hex.is_some()),
        ] {
            only_for(f, set, "udp")?;
        }
    }
    if raw.kind != "grpc" {
        only_for("grpc_service", raw.grpc_service.is_some(), "grpc")?;
    }
    let bytes = |f: &str, text: Option<String>, hex_text: Option<String>| match (text, hex_text) {
        (Some(_), Some(_)) => Err(e(f, format!("give {f} or {f}_hex, not both"))),
        (Some(t), None) => Ok(t.into_bytes()),
        (None, Some(h)) => hex(&h).ok_or_else(|| {
            e(
                &format!("{f}_hex"),
                format!("{h:?} is not hex bytes like \"0a1b2c\""),
            )
        }),
        (None, None) => Ok(Vec::new()),
    };
    let kind = match raw.kind.as_str() {
        "tcp" => ProbeKind::Tcp,
        "http" | "https" => ProbeKind::Http {
            tls: raw.kind == "https",
            method: raw.method.unwrap_or_else(|| "GET".into()),
            path: raw.path.unwrap_or_else(|| "/".into()),
            host: raw.host.unwrap_or_default(),
            expect_status: raw
                .expect_status
                .iter()
                .map(|s| {
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| {
                            e(
                                "expect_status",
                                format!("{s} is not an HTTP status (100-599)"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            expect_body: raw.expect_body,
        },
        "udp" => ProbeKind::Udp {
            send: bytes("send", raw.send, raw.send_hex)?,
            expect: bytes("expect", raw.expect, raw.expect_hex)?,
        },
        "grpc" => ProbeKind::Grpc {
            service: raw.grpc_service.unwrap_or_default(),
        },
        other => {
            return Err(e(
                "kind",
                format!("unknown kind {other:?}; expected one of: tcp, http, https, udp, grpc"),
            ));
        }
    };
    let duration = |f: &str, text: Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(&t).map_err(|_| {
            e(
                f,
                format!("{t:?} is not a duration like \"500ms\" or \"2s\""),
            )
        }),
    };
    let count = |f: &str, v: Option<i64>, default: u32| match v {
        None => Ok(default),
        Some(v) => u32::try_from(v).map_err(|_| e(f, format!("{v} is out of range"))),
    };
    let port = match raw.port {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| e("port", format!("{p} is not a port (1-65535)")))?,
        ),
    };
    let check = HealthCheck {
        kind,
        port,
        interval: duration("interval", raw.interval, DEFAULT_INTERVAL)?,
        timeout: duration("timeout", raw.timeout, DEFAULT_TIMEOUT)?,
        rise: count("rise", raw.rise, DEFAULT_RISE)?,
        fall: count("fall", raw.fall, DEFAULT_FALL)?,
        on_down: match raw.on_down.as_deref() {
            None | Some("drain") => OnDown::Drain,
            Some("remove") => OnDown::Remove,
            Some(other) => {
                return Err(e(
                    "on_down",
                    format!("unknown {other:?}; expected drain or remove"),
                ));
            }
        },
    };
    if let Some((f, why)) = check.problem() {
        return Err(e(f, why));
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HealthCheck, ConfigError> {
        let raw: RawHealthCheck = toml::from_str(text).map_err(|e| ConfigError {
            file: "t".into(),
            field: String::new(),
            service: None,
            message: e.to_string(),
        })?;
        check(raw, &|f, m| ConfigError {
            file: "t".into(),
            field: f.into(),
            service: None,
            message: m,
        })
    }

    #[test]
    fn an_http_check_with_defaults() {
        let c = parse("kind = \"http\"\npath = \"/healthz\"\n").expect("test");
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!((c.rise, c.fall), (DEFAULT_RISE, DEFAULT_FALL));
        assert!(
            matches!(c.kind, ProbeKind::Http { ref method, ref path, tls: false, .. } if method == "GET" && path == "/healthz")
        );
    }

    #[test]
    fn a_udp_check_in_hex() {
        let c = parse("kind = \"udp\"\nsend_hex = \"00 01 ff\"\nexpect = \"ok\"\n").expect("test");
        assert_eq!(
            c.kind,
            ProbeKind::Udp {
                send: vec![0, 1, 255],
                expect: b"ok".to_vec()
            }
        );
    }

    #[test]
    fn an_inline_check_as_an_annotation_writes_it() {
        let c = parse_inline("kind = \"tcp\", interval = \"2s\", fall = 5").expect("test");
        assert_eq!((c.interval, c.fall), (Duration::from_secs(2), 5));
        let e = parse_inline("kind = \"tcp\", fall = 0").expect_err("test");
        assert!(e.starts_with("health_check.fall: "), "{e}");
        let e = parse_inline("kind = tcp").expect_err("test");
        assert!(e.contains("not fields like"), "{e}");
        let e = parse_inline("kind = \"tcp\", colour = \"red\"").expect_err("test");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let field = |t: &str| parse(t).expect_err("test").field;
        assert_eq!(field("kind = \"ping\"\n"), "health_check.kind");
        assert_eq!(field("kind = \"tcp\"\npath = \"/\"\n"), "health_check.path");
        assert_eq!(
            field("kind = \"udp\"\nsend_hex = \"zz\"\n"),
            "health_check.send_hex"
        );
        assert_eq!(field("kind = \"udp\"\n"), "health_check.send");
        assert_eq!(
            field("kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"3s\"\n"),
            "health_check.timeout"
        );
        assert_eq!(
            field("kind = \"http\"\nexpect_status = [700]\n"),
            "health_check.expect_status"
        );
        assert_eq!(
            field("kind = \"tcp\"\non_down = \"panic\"\n"),
            "health_check.on_down"
        );
        assert_eq!(field("kind = \"tcp\"\nfall = -1\n"), "health_check.fall");
    }
}
