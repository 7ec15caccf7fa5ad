//! Validation of what clients send over HTTP, for the fields the
//! appliance reads, with the real server's answer: 422 `Invalid`, the
//! message `<Kind> "<name>" is invalid: <field>: <problem>, ...` and one
//! cause per problem. (`FakeApi::apply`, the tests' own door, stores what
//! it is given, so tests can still feed malformed objects to the client.)

use std::net::IpAddr;

use serde_json::{Value, json};

use super::{ApiError, Kind, api_error};

/// One problem: (cause reason, field, message).
type Problem = (&'static str, String, String);

/// Checks an object of `kind` named `name` before it is stored.
pub fn object(kind: Kind, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    match kind {
        Kind::Services => service(obj, &mut problems),
        Kind::EndpointSlices => slice(obj, &mut problems),
        _ => {}
    }
    if problems.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = problems
        .iter()
        .map(|(_, field, message)| format!("{field}: {message}"))
        .collect();
    let mut e = api_error(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {}", kind.kind(), text.join(", ")),
    );
    e.details = json!({
        "name": name, "kind": kind.kind(),
        "causes": problems.iter().map(|(reason, field, message)| json!({
            "reason": reason, "message": message, "field": field
        })).collect::<Vec<_>>()
    });
    Err(e)
}

fn port_number(v: &Value, field: String, problems: &mut Vec<Problem>) {
    match v.as_i64() {
        Some(p) if (1..=65_535).contains(&p) => {}
        Some(p) => problems.push((
            "FieldValueInvalid",
            field,
            format!("Invalid value: {p}: must be between 1 and 65535, inclusive"),
        )),
        None if v.is_null() => {
            problems.push(("FieldValueRequired", field, "Required value".into()))
        }
        None => problems.push((
            "FieldValueInvalid",
            field,
            format!("Invalid value: {v}: must be a number"),
        )),
    }
}

fn protocol(v: &Value, field: String, problems: &mut Vec<Problem>) {
    if let Some(p) = v.as_str()
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        problems.push((
            "FieldValueNotSupported",
            field,
            format!("Unsupported value: \"{p}\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
        ));
    }
}

fn ip(v: &Value, field: String, problems: &mut Vec<Problem>) {
    let text = v.as_str().unwrap_or_default();
    if text.parse::<IpAddr>().is_err() {
        problems.push((
            "FieldValueInvalid",
            field,
            format!("Invalid value: \"{text}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
        ));
    }
}

/// An IANA service name (a named targetPort): at most 15 lowercase
/// letters, digits and dashes, with a letter.
fn port_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 15
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && text.chars().any(|c| c.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--")
}

fn service(obj: &Value, problems: &mut Vec<Problem>) {
    let spec = &obj["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        problems.push((
            "FieldValueNotSupported",
            "spec.type".into(),
            format!("Unsupported value: \"{kind}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && spec["clusterIP"] != "None" {
        problems.push((
            "FieldValueRequired",
            "spec.ports".into(),
            "Required value".into(),
        ));
    }
    let mut seen = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        port_number(&p["port"], at("port"), problems);
        protocol(&p["protocol"], at("protocol"), problems);
        match &p["targetPort"] {
            Value::Null => {}
            Value::String(name) if port_name(name) => {}
            t @ Value::Number(_) => port_number(t, at("targetPort"), problems),
            t => problems.push((
                "FieldValueInvalid",
                at("targetPort"),
                format!("Invalid value: {t}: must contain only lowercase alphanumeric characters or '-', at most 15, and a letter"),
            )),
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            problems.push(("FieldValueRequired", at("name"), "Required value".into()));
        }
        let key = (
            p["port"].clone(),
            p["protocol"].as_str().unwrap_or("TCP").to_owned(),
        );
        if seen.contains(&key) {
            problems.push((
                "FieldValueDuplicate",
                at("port"),
                format!("Duplicate value: \"{}/{}\"", key.0, key.1),
            ));
        }
        seen.push(key);
    }
    for field in ["clusterIP", "loadBalancerIP"] {
        match spec[field].as_str() {
            None | Some("" | "None") => {}
            Some(_) => ip(&spec[field], format!("spec.{field}"), problems),
        }
    }
    for (i, e) in spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        ip(e, format!("spec.externalIPs[{i}]"), problems);
    }
}

fn slice(obj: &Value, problems: &mut Vec<Problem>) {
    let family = obj["addressType"].as_str().unwrap_or_default();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        problems.push((
            "FieldValueNotSupported",
            "addressType".into(),
            format!(
                "Unsupported value: \"{family}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
            ),
        ));
    }
    for (i, e) in obj["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (j, a) in e["addresses"].as_array().into_iter().flatten().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let text = a.as_str().unwrap_or_default();
            let ok = match family {
                "IPv4" => text.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => text.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => true,
            };
            if !ok {
                problems.push((
                    "FieldValueInvalid",
                    field,
                    format!("Invalid value: \"{text}\": must be a valid {family} address"),
                ));
            }
        }
    }
    for (i, p) in obj["ports"].as_array().into_iter().flatten().enumerate() {
        if !p["port"].is_null() {
            port_number(&p["port"], format!("ports[{i}].port"), problems);
        }
        protocol(&p["protocol"], format!("ports[{i}].protocol"), problems);
    }
}
