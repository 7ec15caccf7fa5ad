//! A health check as an operator writes it (`[service.health_check]` in
//! the services file; docs in `deploy/examples/services.toml`), checked
//! field by field into the model's `HealthCheck`.

use std::time::Duration;

use serde::Deserialize;

use crate::config::error::ConfigError;
use crate::model::{HealthCheck, OnDown, ProbeKind};

/// Defaults of a check's timing when neither the check nor the member
/// config's `[health]` gives them.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Half the interval: a probe that times out is also retried after
/// half an interval (`Machine::next_in`), so a backend that stops
/// answering is down within about 1.5 s of its first failed probe.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

/// What a check leaves out: the member config's `[health]` section
/// (`interval`, `timeout`, `rise`, `fall`, `on_down`), else the built-in
/// defaults. The source that translates the services (the leader's)
/// applies its own member's defaults, so members should agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub on_down: OnDown,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            on_down: OnDown::Drain,
        }
    }
}

impl Defaults {
    /// A check of `kind` on `port` with this timing.
    fn check(self, kind: ProbeKind, port: Option<u16>) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
            on_down: self.on_down,
        }
    }
}

/// The member config's `[health]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    on_down: Option<String>,
}

/// Checks the member config's `[health]`; `err(field, message)` names the
/// field (`health.` is prefixed here). The timing must make a valid check
/// on its own (a timeout shorter than the interval, rise and fall at
/// least 1).
pub fn defaults(
    raw: RawDefaults,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<Defaults, ConfigError> {
    let e = |f: &str, m: String| err(&format!("health.{f}"), m);
    let d = timing(
        Timing {
            interval: raw.interval,
            timeout: raw.timeout,
            rise: raw.rise,
            fall: raw.fall,
            on_down: raw.on_down,
        },
        &Defaults::default(),
        &e,
    )?;
    if let Some((f, why)) = d.check(ProbeKind::Tcp, None).problem() {
        return Err(e(f, why));
    }
    Ok(d)
}

/// The timing fields shared by a check and the defaults.
struct Timing {
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    on_down: Option<String>,
}

fn timing(
    raw: Timing,
    base: &Defaults,
    e: &impl Fn(&str, String) -> ConfigError,
) -> Result<Defaults, ConfigError> {
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
    Ok(Defaults {
        interval: duration("interval", raw.interval, base.interval)?,
        timeout: duration("timeout", raw.timeout, base.timeout)?,
        rise: count("rise", raw.rise, base.rise)?,
        fall: count("fall", raw.fall, base.fall)?,
        on_down: match raw.on_down.as_deref() {
            None => base.on_down,
            Some("drain") => OnDown::Drain,
            Some("remove") => OnDown::Remove,
            Some(other) => {
                return Err(e(
                    "on_down",
                    format!("unknown {other:?}; expected drain or remove"),
                ));
            }
        },
    })
}

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
pub fn parse_inline(text: &str, defaults: &Defaults) -> Result<HealthCheck, String> {
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
    check(wrapped.check, defaults, &|field, message| ConfigError {
        file: std::path::PathBuf::new(),
        field: field.to_owned(),
        service: None,
        message,
    })
    .map_err(|e| format!("{}: {}", e.field, e.message))
}

/// Checks a raw check; what it leaves out comes from `defaults`;
/// `err(field, message)` names the field in the file (`health_check.` is
/// prefixed here).
pub fn check(
    raw: RawHealthCheck,
    defaults: &Defaults,
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
    let port = match raw.port {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| e("port", format!("{p} is not a port (1-65535)")))?,
        ),
    };
    let t = timing(
        Timing {
            interval: raw.interval,
            timeout: raw.timeout,
            rise: raw.rise,
            fall: raw.fall,
            on_down: raw.on_down,
        },
        defaults,
        &e,
    )?;
    let check = t.check(kind, port);
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
        check(raw, &Defaults::default(), &|f, m| ConfigError {
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
        let c = parse_inline(
            "kind = \"tcp\", interval = \"2s\", fall = 5",
            &Defaults::default(),
        )
        .expect("test");
        assert_eq!((c.interval, c.fall), (Duration::from_secs(2), 5));
        let e = parse_inline("kind = \"tcp\", fall = 0", &Defaults::default()).expect_err("test");
        assert!(e.starts_with("health_check.fall: "), "{e}");
        let e = parse_inline("kind = tcp", &Defaults::default()).expect_err("test");
        assert!(e.contains("not fields like"), "{e}");
        let e = parse_inline("kind = \"tcp\", colour = \"red\"", &Defaults::default())
            .expect_err("test");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn member_defaults_fill_what_a_check_leaves_out() {
        let err = |f: &str, m: String| ConfigError {
            file: "member.toml".into(),
            field: f.into(),
            service: None,
            message: m,
        };
        let raw: RawDefaults =
            toml::from_str("interval = \"5s\"\ntimeout = \"2s\"\nfall = 2\non_down = \"remove\"\n")
                .expect("test");
        let d = defaults(raw, &err).expect("test");
        // A check that sets only its kind takes every default; one that
        // sets a field keeps it.
        let c = parse_inline("kind = \"tcp\"", &d).expect("test");
        assert_eq!(
            (c.interval, c.timeout, c.rise, c.fall, c.on_down),
            (
                Duration::from_secs(5),
                Duration::from_secs(2),
                DEFAULT_RISE,
                2,
                OnDown::Remove
            )
        );
        let c = parse_inline("kind = \"tcp\", fall = 4, on_down = \"drain\"", &d).expect("test");
        assert_eq!((c.fall, c.on_down), (4, OnDown::Drain));
        // A check's own interval below the default timeout is its problem,
        // named at its field.
        let e = parse_inline("kind = \"tcp\", interval = \"1s\"", &d).expect_err("test");
        assert!(e.starts_with("health_check.timeout: "), "{e}");
        // Defaults that make no valid check are refused by field.
        for (text, field) in [
            ("interval = \"1s\"\ntimeout = \"3s\"\n", "health.timeout"),
            ("rise = 0\n", "health.rise"),
            ("interval = \"often\"\n", "health.interval"),
            ("on_down = \"panic\"\n", "health.on_down"),
        ] {
            let raw: RawDefaults = toml::from_str(text).expect("test");
            assert_eq!(defaults(raw, &err).expect_err(text).field, field, "{text}");
        }
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
