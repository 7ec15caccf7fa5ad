//! The three patch types a real API server takes for built-in resources,
//! as it applies them: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and strategic merge patch, the one `kubectl apply` and `kubectl edit`
//! send, with its directives (`$patch: delete | replace | merge`,
//! `$setElementOrder/<list>`, `$retainKeys`, `$deleteFromPrimitiveList/
//! <list>`) and the merge keys of the lists the served kinds have
//! (k8s.io/api's `patchMergeKey` tags). A list without a merge key is
//! replaced whole, as the real server does.

use serde_json::{Map, Value};

use super::{ApiError, Kind, api_error};

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge key of the list at `path` (field names from the object's
/// root, list positions left out) in an object of `kind`; None: the list
/// is replaced whole. From k8s.io/api's `patchMergeKey` tags.
fn merge_key(kind: Kind, path: &[String]) -> Option<&'static str> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (kind, p.as_slice()) {
        (_, ["metadata", "ownerReferences"]) => Some("uid"),
        (Kind::Services, ["spec", "ports"]) => Some("port"),
        (Kind::Services, ["status", "conditions"]) => Some("type"),
        (Kind::Nodes, ["status", "addresses"]) => Some("type"),
        (Kind::Nodes, ["status", "conditions"]) => Some("type"),
        (Kind::DaemonSets, ["spec", "template", "spec", rest @ ..]) => match rest {
            ["containers" | "initContainers" | "volumes"] => Some("name"),
            ["containers" | "initContainers", "env"] => Some("name"),
            ["containers" | "initContainers", "ports"] => Some("containerPort"),
            ["containers" | "initContainers", "volumeMounts"] => Some("mountPath"),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the list at `path` is a list of scalars merged as a set
/// (`patchStrategy: merge` without a key): `metadata.finalizers`.
fn merged_scalars(path: &[String]) -> bool {
    path.len() == 2 && path[0] == "metadata" && path[1] == "finalizers"
}

fn invalid(message: String) -> ApiError {
    api_error(400, "BadRequest", message)
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic_merge_patch(
    kind: Kind,
    target: &mut Value,
    patch: &Value,
) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(invalid("a strategic merge patch must be an object".into()));
    }
    merge_map(kind, target, patch, &mut Vec::new())?;
    Ok(())
}

/// Merges map `patch` into `target`; returns false when the patch says
/// the map is to be deleted (`$patch: delete`).
fn merge_map(
    kind: Kind,
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
) -> Result<bool, ApiError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(true);
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(false),
        Some("replace") => {
            let mut whole = p.clone();
            whole.remove("$patch");
            *target = Value::Object(strip(whole));
            return Ok(true);
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(invalid(format!("unknown patch type: {other:?}")));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(true);
    };
    if let Some(keep) = p.get("$retainKeys") {
        let Some(keep) = keep.as_array() else {
            return Err(invalid("$retainKeys must be a list".into()));
        };
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    let mut orders = Vec::new();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), v.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Array(items) => {
                let merged = match (merge_key(kind, path), t.get_mut(k)) {
                    (Some(key), Some(Value::Array(current))) => {
                        merge_list(kind, current, items, key, path)?
                    }
                    (None, Some(Value::Array(current))) if merged_scalars(path) => {
                        let mut out = current.clone();
                        for x in items {
                            if !out.contains(x) {
                                out.push(x.clone());
                            }
                        }
                        out
                    }
                    _ => strip_list(items),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                if !merge_map(kind, slot, v, path)? {
                    t.remove(k);
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field.clone());
        let key = merge_key(kind, path);
        path.pop();
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(&field), order.as_array()) {
            reorder(list, order, key);
        }
    }
    Ok(true)
}

/// Merges the items of a keyed list: an item of the patch merges into the
/// item with the same key, or is appended; `$patch: delete` removes it;
/// `$patch: replace` replaces the whole list.
fn merge_list(
    kind: Kind,
    current: &[Value],
    items: &[Value],
    key: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, ApiError> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(strip_list(
            &items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect::<Vec<_>>(),
        ));
    }
    let mut out: Vec<Value> = current.to_vec();
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(invalid(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let at = out.iter().position(|x| x.get(key) == Some(id));
        match (item.get("$patch").and_then(Value::as_str), at) {
            (Some("delete"), Some(i)) => {
                out.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                if !merge_map(kind, &mut out[i], item, path)? {
                    out.remove(i);
                }
            }
            (_, None) => {
                let mut fresh = Value::Null;
                if merge_map(kind, &mut fresh, item, path)? {
                    out.push(fresh);
                }
            }
        }
    }
    Ok(out)
}

/// Orders `list` as `order` says (items named there first, in its order,
/// by their merge key or their value; the others after, as they were).
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
        None => v.clone(),
    };
    let rank = |v: &Value| {
        let me = id(v);
        order.iter().position(|o| id(o) == me).unwrap_or(usize::MAX)
    };
    // Stable: items not named keep their relative order.
    list.sort_by_key(rank);
}

/// A patch's map without its directives, as stored.
fn strip(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip_value(v)))
        .collect()
}

fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip(m)),
        Value::Array(items) => Value::Array(strip_list(&items)),
        other => other,
    }
}

fn strip_list(items: &[Value]) -> Vec<Value> {
    items.iter().cloned().map(strip_value).collect()
}

/// Applies a JSON patch (RFC 6902: add, remove, replace, move, copy,
/// test).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Some(ops) = patch.as_array() else {
        return Err(invalid("a JSON patch must be a list of operations".into()));
    };
    for (i, op) in ops.iter().enumerate() {
        let field = |name: &str| -> Result<&str, ApiError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("operation {i}: missing {name:?}")))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add(target, path, value_of(op, i)?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value_of(op, i)?)?;
            }
            "move" => {
                let v = remove(target, field("from")?)?;
                add(target, path, v)?;
            }
            "copy" => {
                let v = target
                    .pointer(field("from")?)
                    .cloned()
                    .ok_or_else(|| invalid(format!("operation {i}: no value at \"from\"")))?;
                add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(&value_of(op, i)?) {
                    return Err(api_error(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: testing value {path} failed"
                        ),
                    ));
                }
            }
            other => return Err(invalid(format!("operation {i}: unknown op {other:?}"))),
        }
    }
    Ok(())
}

fn value_of(op: &Value, i: usize) -> Result<Value, ApiError> {
    op.get("value")
        .cloned()
        .ok_or_else(|| invalid(format!("operation {i}: missing \"value\"")))
}

/// Splits a JSON pointer into its parent's pointer and its last token.
fn split(path: &str) -> Result<(&str, String), ApiError> {
    let at = path
        .rfind('/')
        .ok_or_else(|| invalid(format!("{path:?} is not a JSON pointer")))?;
    let token = path[at + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..at], token))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(token, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let at = if token == "-" {
                a.len()
            } else {
                token
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| invalid(format!("{path}: index out of range")))?
            };
            a.insert(at, value);
            Ok(())
        }
        _ => Err(invalid(format!("{path}: the parent does not exist"))),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, token) = split(path)?;
    let gone = match target.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&token),
        Some(Value::Array(a)) => token
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    };
    gone.ok_or_else(|| {
        api_error(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {path}: nothing to remove"),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kubectl_apply_patch_of_service_ports_merges_by_port() {
        // What kubectl apply sends when a manifest drops port 443, adds
        // 8443 and changes 80's target: the order directive, a delete.
        let mut svc = json!({"metadata": {"name": "web", "annotations": {"a": "1"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                          {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]}});
        let patch = json!({"metadata": {"annotations": {"b": "2"}},
            "spec": {"$setElementOrder/ports": [{"port": 8443}, {"port": 80}],
                "ports": [{"port": 80, "targetPort": 9090},
                          {"name": "alt", "port": 8443, "protocol": "TCP"},
                          {"$patch": "delete", "port": 443}]}});
        strategic_merge_patch(Kind::Services, &mut svc, &patch).expect("patch");
        assert_eq!(
            svc,
            json!({"metadata": {"name": "web", "annotations": {"a": "1", "b": "2"}},
                "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1",
                    "ports": [{"name": "alt", "port": 8443, "protocol": "TCP"},
                              {"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"}]}})
        );
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced_and_directives_never_stored() {
        let mut slice =
            json!({"endpoints": [{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.2"]}]});
        let patch = json!({"endpoints": [{"addresses": ["10.1.0.3"]}]});
        strategic_merge_patch(Kind::EndpointSlices, &mut slice, &patch).expect("patch");
        assert_eq!(slice, json!({"endpoints": [{"addresses": ["10.1.0.3"]}]}));
        let mut svc = json!({"spec": {"selector": {"app": "a", "tier": "b"}}});
        let patch = json!({"spec": {"selector": {"$patch": "replace", "app": "c"}, "$retainKeys": ["selector"]}});
        strategic_merge_patch(Kind::Services, &mut svc, &patch).expect("patch");
        assert_eq!(svc, json!({"spec": {"selector": {"app": "c"}}}));
        let text = svc.to_string();
        assert!(!text.contains('$'), "{text}");
    }

    #[test]
    fn json_patch_applies_rfc_6902_operations() {
        let mut v = json!({"spec": {"ports": [{"port": 80}], "type": "ClusterIP"}});
        json_patch(
            &mut v,
            &json!([
                {"op": "test", "path": "/spec/type", "value": "ClusterIP"},
                {"op": "replace", "path": "/spec/type", "value": "LoadBalancer"},
                {"op": "add", "path": "/spec/ports/-", "value": {"port": 443}},
                {"op": "copy", "from": "/spec/type", "path": "/spec/was"},
                {"op": "remove", "path": "/spec/ports/0"}
            ]),
        )
        .expect("patch");
        assert_eq!(
            v,
            json!({"spec": {"ports": [{"port": 443}], "type": "LoadBalancer", "was": "LoadBalancer"}})
        );
        let failed = json_patch(
            &mut v,
            &json!([{"op": "test", "path": "/spec/type", "value": "x"}]),
        );
        assert_eq!(failed.map_err(|e| e.code), Err(422));
    }
}
