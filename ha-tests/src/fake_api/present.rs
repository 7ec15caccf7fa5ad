//! What kubectl reads besides the objects: discovery (with short names and
//! categories, so `kubectl get svc` and `kubectl get all` work), the
//! OpenAPI v3 documents its validation looks at (each PATCH, PUT and POST
//! says it takes `fieldValidation`, so kubectl leaves validation to the
//! server and needs no `--validate=false`), and server-side tables with
//! the columns a real server prints (`kubectl get svc`, `-o wide`).

use serde_json::{Value, json};

use super::Kind;

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// (group, version prefix of paths) of each kind.
fn group(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Services | Kind::Nodes | Kind::Namespaces => ("", "api/v1"),
        Kind::EndpointSlices => ("discovery.k8s.io", "apis/discovery.k8s.io/v1"),
        Kind::DaemonSets => ("apps", "apis/apps/v1"),
    }
}

const KINDS: [Kind; 5] = [
    Kind::Services,
    Kind::Nodes,
    Kind::Namespaces,
    Kind::EndpointSlices,
    Kind::DaemonSets,
];

fn resource(kind: Kind) -> Value {
    let (short, categories): (&[&str], &[&str]) = match kind {
        Kind::Services => (&["svc"], &["all"]),
        Kind::Nodes => (&["no"], &[]),
        Kind::Namespaces => (&["ns"], &[]),
        Kind::EndpointSlices => (&[], &[]),
        Kind::DaemonSets => (&["ds"], &["all"]),
    };
    let mut r = json!({
        "name": kind.plural(), "singularName": kind.kind().to_lowercase(),
        "namespaced": kind.namespaced(), "kind": kind.kind(), "verbs": VERBS,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    if !categories.is_empty() {
        r["categories"] = json!(categories);
    }
    r
}

/// The discovery document at `path`, if it is one.
pub fn discovery(path: &str) -> Option<Value> {
    let list = |group_version: &str, extra: Vec<Value>| {
        let mut resources: Vec<Value> = KINDS
            .iter()
            .filter(|k| {
                let prefix = group(**k).1;
                prefix == format!("api/{group_version}")
                    || prefix == format!("apis/{group_version}")
            })
            .map(|k| resource(*k))
            .collect();
        resources.extend(extra);
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
               "resources": resources})
    };
    match path.trim_end_matches('/') {
        "/version" => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
            "platform": "linux/amd64", "goVersion": "none", "compiler": "none",
            "buildDate": "2026-01-01T00:00:00Z", "gitCommit": "fake", "gitTreeState": "clean"
        })),
        "/api" => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        })),
        "/api/v1" => Some(list(
            "v1",
            vec![
                json!({"name": "services/status", "singularName": "", "namespaced": true,
                        "kind": "Service", "verbs": ["get", "patch", "update"]}),
            ],
        )),
        "/apis" => {
            let groups: Vec<Value> = ["discovery.k8s.io", "apps"]
                .iter()
                .map(|g| {
                    json!({
                        "name": g,
                        "versions": [{"groupVersion": format!("{g}/v1"), "version": "v1"}],
                        "preferredVersion": {"groupVersion": format!("{g}/v1"), "version": "v1"}
                    })
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        "/apis/apps/v1" => Some(list("apps/v1", Vec::new())),
        "/apis/discovery.k8s.io/v1" => Some(list("discovery.k8s.io/v1", Vec::new())),
        _ => None,
    }
}

/// The OpenAPI v3 documents: the root (`/openapi/v3`) lists one per group
/// version; each has, for every kind, the paths kubectl's validation
/// looks up (the operation's group-version-kind and its `fieldValidation`
/// parameter). No schemas: kubectl apply then computes its patches from
/// its built-in types, as it does for these kinds anyway.
pub fn openapi(path: &str) -> Option<Value> {
    let path = path.trim_end_matches('/');
    if path == "/openapi/v3" {
        let paths: serde_json::Map<String, Value> =
            ["api/v1", "apis/discovery.k8s.io/v1", "apis/apps/v1"]
                .iter()
                .map(|p| {
                    (
                        (*p).to_owned(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=1")}),
                    )
                })
                .collect();
        return Some(json!({"paths": paths}));
    }
    let prefix = path.strip_prefix("/openapi/v3/")?;
    let kinds: Vec<Kind> = KINDS
        .iter()
        .copied()
        .filter(|k| group(*k).1 == prefix)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let mut paths = serde_json::Map::new();
    for kind in kinds {
        let (group, _) = group(kind);
        let gvk = json!({"group": group, "version": "v1", "kind": kind.kind()});
        let op = |action: &str| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        let base = if kind.namespaced() {
            format!("/{prefix}/namespaces/{{namespace}}/{}", kind.plural())
        } else {
            format!("/{prefix}/{}", kind.plural())
        };
        paths.insert(base.clone(), json!({"post": op("post"), "get": op("list")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"patch": op("patch"), "put": op("put"), "get": op("get"), "delete": op("delete")}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-fake"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// kubectl's short human duration (`5s`, `3m20s`, `2h10m`, `4d`).
fn age(seconds: i64) -> String {
    if seconds < 0 {
        return "0s".into();
    }
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        match seconds % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            rest => format!("{h}h{rest}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            rest => format!("{d}d{rest}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Seconds since a `creationTimestamp` ("YYYY-MM-DDTHH:MM:SSZ").
fn seconds_since(stamp: &str, now: i64) -> i64 {
    let n = |a: usize, b: usize| stamp.get(a..b).and_then(|t| t.parse::<i64>().ok());
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) =
        (n(0, 4), n(5, 7), n(8, 10), n(11, 13), n(14, 16), n(17, 19))
    else {
        return 0;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    now - (days * 86_400 + h * 3600 + mi * 60 + s)
}

fn column(name: &str, format: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority})
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn joined(list: Vec<String>, empty: &str) -> String {
    if list.is_empty() {
        empty.to_owned()
    } else {
        list.join(",")
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(text).collect()
}

/// The columns and cells of one object of `kind`.
fn columns(kind: Kind) -> Vec<Value> {
    let name = column("Name", "name", "Name must be unique within a namespace.", 0);
    let age = column(
        "Age",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    let mut c = vec![name];
    match kind {
        Kind::Services => {
            c.push(column("Type", "", "The type of the service.", 0));
            c.push(column(
                "Cluster-IP",
                "",
                "The IP address of the service.",
                0,
            ));
            c.push(column(
                "External-IP",
                "",
                "The external IP address of the service.",
                0,
            ));
            c.push(column(
                "Port(s)",
                "",
                "The ports the service listens on.",
                0,
            ));
            c.push(age);
            c.push(column(
                "Selector",
                "",
                "Route service traffic to pods with label keys and values matching this selector.",
                1,
            ));
        }
        Kind::EndpointSlices => {
            c.push(column(
                "AddressType",
                "",
                "The type of address of the endpoints.",
                0,
            ));
            c.push(column("Ports", "", "The ports of the endpoints.", 0));
            c.push(column(
                "Endpoints",
                "",
                "The addresses of the endpoints.",
                0,
            ));
            c.push(age);
        }
        Kind::Namespaces => {
            c.push(column("Status", "", "The status of the namespace.", 0));
            c.push(age);
        }
        Kind::Nodes => {
            c.push(column("Status", "", "The status of the node.", 0));
            c.push(column("Roles", "", "The roles of the node.", 0));
            c.push(age);
            c.push(column(
                "Version",
                "",
                "Kubelet Version reported by the node.",
                0,
            ));
            c.push(column(
                "Internal-IP",
                "",
                "The node's internal IP address.",
                1,
            ));
        }
        Kind::DaemonSets => {
            for (n, d) in [
                ("Desired", "The desired number of pods."),
                ("Current", "The current number of pods."),
                ("Ready", "The number of pods ready."),
                ("Up-to-date", "The number of pods updated."),
                ("Available", "The number of pods available."),
                ("Node Selector", "The node selector of the pods."),
            ] {
                c.push(column(n, "", d, 0));
            }
            c.push(age);
            c.push(column(
                "Containers",
                "",
                "Names of each container in the template.",
                1,
            ));
            c.push(column(
                "Images",
                "",
                "Images referenced by each container in the template.",
                1,
            ));
        }
    }
    c
}

fn cells(kind: Kind, o: &Value, now: i64) -> Vec<Value> {
    let name = text(&o["metadata"]["name"]);
    let age = age(seconds_since(
        o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default(),
        now,
    ));
    let spec = &o["spec"];
    match kind {
        Kind::Services => {
            let kind = spec["type"].as_str().unwrap_or("ClusterIP");
            let external = strings(&spec["externalIPs"]);
            let external = match kind {
                "LoadBalancer" => {
                    let mut ips: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| {
                            text(if i["ip"].is_null() {
                                &i["hostname"]
                            } else {
                                &i["ip"]
                            })
                        })
                        .collect();
                    ips.extend(external);
                    joined(ips, "<pending>")
                }
                "ExternalName" => text(&spec["externalName"]),
                _ => joined(external, "<none>"),
            };
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let protocol = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(n) => format!("{}:{n}/{protocol}", text(&p["port"])),
                        None => format!("{}/{protocol}", text(&p["port"])),
                    }
                })
                .collect();
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            let cluster_ip = spec["clusterIP"]
                .as_str()
                .filter(|c| !c.is_empty())
                .unwrap_or("<none>");
            vec![
                json!(name),
                json!(kind),
                json!(cluster_ip),
                json!(external),
                json!(joined(ports, "<none>")),
                json!(age),
                json!(joined(selector, "<none>")),
            ]
        }
        Kind::EndpointSlices => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| !p["port"].is_null())
                .map(|p| text(&p["port"]))
                .collect();
            let addresses: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| strings(&e["addresses"]))
                .collect();
            let shown = if addresses.len() > 3 {
                format!(
                    "{} + {} more...",
                    addresses[..3].join(","),
                    addresses.len() - 3
                )
            } else {
                joined(addresses, "<unset>")
            };
            vec![
                json!(name),
                json!(text(&o["addressType"])),
                json!(joined(ports, "<unset>")),
                json!(shown),
                json!(age),
            ]
        }
        Kind::Namespaces => vec![json!(name), json!(text(&o["status"]["phase"])), json!(age)],
        Kind::Nodes => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map_or("Unknown", |c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                });
            let internal = o["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .map_or("<none>".to_owned(), |a| text(&a["address"]));
            vec![
                json!(name),
                json!(ready),
                json!("<none>"),
                json!(age),
                json!(text(&o["status"]["nodeInfo"]["kubeletVersion"])),
                json!(internal),
            ]
        }
        Kind::DaemonSets => {
            let st = &o["status"];
            let n = |f: &str| json!(st[f].as_i64().unwrap_or(0));
            let template = &spec["template"]["spec"];
            let containers = template["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let selector: Vec<String> = template["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            vec![
                json!(name),
                n("desiredNumberScheduled"),
                n("currentNumberScheduled"),
                n("numberReady"),
                n("updatedNumberScheduled"),
                n("numberAvailable"),
                json!(joined(selector, "<none>")),
                json!(age),
                json!(
                    containers
                        .iter()
                        .map(|c| text(&c["name"]))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                json!(
                    containers
                        .iter()
                        .map(|c| text(&c["image"]))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ]
        }
    }
}

/// A list (or one object) as the `meta.k8s.io/v1` Table kubectl asks for
/// (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`); each row
/// carries the object's metadata (`includeObject=Metadata`, the default),
/// the whole object (`Object`) or nothing (`None`).
pub fn table(kind: Kind, items: &[Value], metadata: Value, include: &str, now: i64) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(kind, o, now)});
            match include {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]});
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
        "columnDefinitions": columns(kind), "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(200), "3m20s");
        assert_eq!(age(3600 * 2 + 600), "130m");
        assert_eq!(age(3600 * 5 + 600), "5h10m");
        assert_eq!(age(86_400 * 3), "3d");
        // 2026-12-05T00:00:00Z is 1_796_428_800.
        assert_eq!(seconds_since("2026-12-05T00:00:00Z", 1_796_428_810), 10);
    }
}
