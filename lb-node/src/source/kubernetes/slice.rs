//! An EndpointSlice as the views hold it: only what the translation
//! reads, compact (issue 23).
//!
//! Every member keeps every slice decoded (the leader's view, the
//! followers' warm one). As `k8s_openapi`'s `EndpointSlice`, a trimmed
//! slice of 10 endpoints held 8 KB (each `Endpoint` carries room for
//! every field the API defines, each address its own `String` in its own
//! `Vec`); at 100,000 Services that was 0.8 GB per member, four times the
//! replicated state. Here an endpoint's address is one value with its
//! state already derived from its conditions: about 0.5 KB per slice
//! (`ha-tests/src/bin/kube-memory.rs` measures both).
//!
//! Nothing the translation says changes: an address that is not in its
//! canonical form is kept as the text the API gave (parsed again when
//! translated, so a warning quotes it as it was), and the conditions map
//! to a state exactly as before (`state_of`).

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};

use crate::model::{BackendState, Protocol};

/// The label that names a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A slice's `addressType`: only IPv4 and IPv6 slices give backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    V4,
    V6,
    /// FQDN, or anything else: never matches a VIP's family.
    Other,
}

/// One of a slice's ports: what a Service port's name finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// `name`, empty when absent (as the Service port's).
    pub name: Box<str>,
    /// `protocol` (absent: TCP); `None`: one that is not TCP, UDP or SCTP.
    pub protocol: Option<Protocol>,
    /// `port`, as given (checked when translated).
    pub port: Option<i32>,
}

/// One address of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An address in its canonical form.
    Ip(IpAddr),
    /// Anything else, as the API gave it.
    Text(Box<str>),
}

/// One address of an endpoint, with where it was (for warnings) and the
/// endpoint's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's index in `endpoints`.
    pub endpoint: u32,
    /// The address's index in the endpoint's `addresses`.
    pub index: u32,
    pub state: BackendState,
    pub address: Address,
}

/// An EndpointSlice, compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// `metadata.name` (for warnings), `<unnamed>` when absent.
    pub name: Box<str>,
    /// The Service it belongs to ("namespace/name"), from its label.
    pub service: Option<Box<str>>,
    pub address_type: AddressType,
    pub ports: Box<[Port]>,
    /// Every address of every endpoint, in order.
    pub endpoints: Box<[Endpoint]>,
}

/// A protocol's name as the API writes it (absent: TCP).
pub fn protocol_of(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// An endpoint's conditions as a state; absent conditions read as the API
/// defines them (ready and serving true, terminating false).
pub fn state_of(conditions: Option<&EndpointConditions>) -> BackendState {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    match (ready, serving, terminating) {
        (true, _, false) => BackendState::Ready,
        (_, true, true) => BackendState::Serving,
        (_, false, true) => BackendState::Terminating,
        _ => BackendState::NotReady,
    }
}

impl Address {
    fn from_text(text: String) -> Address {
        match text.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() == text => Address::Ip(ip),
            _ => Address::Text(text.into_boxed_str()),
        }
    }

    /// The address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Text(text) => text.parse().ok(),
        }
    }

    /// The address as the API gave it.
    pub fn text(&self) -> String {
        match self {
            Address::Ip(ip) => ip.to_string(),
            Address::Text(text) => text.to_string(),
        }
    }
}

impl From<EndpointSlice> for Slice {
    fn from(e: EndpointSlice) -> Slice {
        let service = e
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|label| {
                format!(
                    "{}/{label}",
                    e.metadata.namespace.as_deref().unwrap_or("default")
                )
                .into_boxed_str()
            });
        let address_type = match e.address_type.as_str() {
            "IPv4" => AddressType::V4,
            "IPv6" => AddressType::V6,
            _ => AddressType::Other,
        };
        let ports = e
            .ports
            .into_iter()
            .flatten()
            .map(|p| Port {
                protocol: protocol_of(p.protocol.as_deref()),
                name: p.name.unwrap_or_default().into_boxed_str(),
                port: p.port,
            })
            .collect();
        let mut endpoints = Vec::new();
        for (i, endpoint) in e.endpoints.into_iter().enumerate() {
            let state = state_of(endpoint.conditions.as_ref());
            for (j, address) in endpoint.addresses.into_iter().enumerate() {
                endpoints.push(Endpoint {
                    endpoint: u32::try_from(i).unwrap_or(u32::MAX),
                    index: u32::try_from(j).unwrap_or(u32::MAX),
                    state,
                    address: Address::from_text(address),
                });
            }
        }
        Slice {
            name: e
                .metadata
                .name
                .unwrap_or_else(|| "<unnamed>".to_owned())
                .into_boxed_str(),
            service,
            address_type,
            ports,
            endpoints: endpoints.into_boxed_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(value: serde_json::Value) -> Slice {
        Slice::from(serde_json::from_value::<EndpointSlice>(value).unwrap_or_default())
    }

    #[test]
    fn a_slice_keeps_what_the_translation_reads() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080}, {"port": 53, "protocol": "UDP"},
                      {"name": "x", "protocol": "ICMP"}],
            "endpoints": [
                {"addresses": ["2001:db8::1", "2001:DB8::2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["not-an-address"]},
            ],
        }));
        assert_eq!(&*s.name, "web-abc");
        assert_eq!(s.service.as_deref(), Some("shop/web"));
        assert_eq!(s.address_type, AddressType::V6);
        assert_eq!(
            s.ports.to_vec(),
            vec![
                Port {
                    name: "http".into(),
                    protocol: Some(Protocol::Tcp),
                    port: Some(8080)
                },
                Port {
                    name: "".into(),
                    protocol: Some(Protocol::Udp),
                    port: Some(53)
                },
                Port {
                    name: "x".into(),
                    protocol: None,
                    port: None
                },
            ]
        );
        let ip = |t: &str| t.parse::<IpAddr>().ok();
        // Canonical text is kept parsed, anything else as given: a
        // warning quotes it as the API wrote it.
        assert_eq!(
            s.endpoints[0].address,
            Address::Ip("2001:db8::1".parse().unwrap_or(IpAddr::from([0; 4])))
        );
        assert_eq!(s.endpoints[1].address, Address::Text("2001:DB8::2".into()));
        assert_eq!(s.endpoints[1].address.ip(), ip("2001:db8::2"));
        assert_eq!(s.endpoints[1].address.text(), "2001:DB8::2");
        assert_eq!(s.endpoints[2].address.ip(), None);
        assert_eq!((s.endpoints[1].endpoint, s.endpoints[1].index), (0, 1));
        assert_eq!((s.endpoints[2].endpoint, s.endpoints[2].index), (1, 0));
        assert_eq!(s.endpoints[0].state, BackendState::Serving);
        // No conditions: ready.
        assert_eq!(s.endpoints[2].state, BackendState::Ready);
    }

    #[test]
    fn a_slice_without_label_or_known_type_belongs_to_nothing_and_matches_no_family() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "x"}, "addressType": "FQDN", "endpoints": [],
        }));
        assert_eq!(s.service, None);
        assert_eq!(s.address_type, AddressType::Other);
        assert!(s.ports.is_empty());
    }
}
