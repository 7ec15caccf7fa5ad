//! One admin call per subcommand, and what it prints.

use std::time::Duration;

use proto::admin::v1 as pb;
use proto::admin::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::cli::{Args, BackendAction, Command, MemberAction, Output};
use crate::client::connect;
use crate::render::{clock, print_services, print_status, rfc3339};

/// Whether a new member's peer address takes a connection (within 2 s).
/// An id or address the member would refuse anyway is left to it (it
/// names the field).
pub(crate) async fn peer_answers(id: u64, peer_address: &str) -> Result<(), String> {
    if id == 0 {
        return Ok(());
    }
    let Ok(mut addresses) = tokio::net::lookup_host(peer_address).await else {
        return Ok(());
    };
    let Some(to) = addresses.next() else {
        return Ok(());
    };
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "member {id}'s peer address {peer_address} does not answer ({e})"
        )),
        Err(_) => Err(format!(
            "member {id}'s peer address {peer_address} does not answer (no connection within 2s)"
        )),
    }
}

/// Makes the call `args` asks for; `first_answer` bounds how long a
/// stream (`events`) waits for the member to take it.
pub(crate) async fn call(
    client: &mut AdminClient<Channel>,
    args: &Args,
    tls: Option<tonic::transport::ClientTlsConfig>,
    first_answer: Option<Duration>,
) -> Result<(), tonic::Status> {
    use pb::set_backend_override_request::Action;
    let out = args.output;
    match &args.command {
        Command::Status => print_status(
            &client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner(),
            out,
        ),
        Command::Services { name } => {
            let r = client
                .list_services(pb::ListServicesRequest {
                    name: name.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_services(&r, out, name.is_some());
        }
        Command::Backend { action } => {
            let (service, backend, action) = match action {
                BackendAction::Drain { service, backend } => {
                    (service, backend, Action::Drain(true))
                }
                BackendAction::Undrain { service, backend } => {
                    (service, backend, Action::Clear(true))
                }
                BackendAction::Weight {
                    service,
                    backend,
                    weight,
                } => (service, backend, Action::Weight(*weight)),
            };
            client
                .set_backend_override(pb::SetBackendOverrideRequest {
                    service: service.clone(),
                    backend: backend.clone(),
                    action: Some(action),
                })
                .await?;
            done(out, "ok");
        }
        Command::TransferLeadership { to } => {
            let r = client
                .transfer_leadership(pb::TransferLeadershipRequest { to: *to })
                .await?
                .into_inner();
            done(out, &format!("member {} leads", r.leader));
        }
        Command::Member {
            action:
                MemberAction::Add {
                    id,
                    peer_address,
                    admin,
                    learner,
                    ..
                },
        } => {
            client
                .add_member(pb::AddMemberRequest {
                    admin_address: admin.clone().unwrap_or_default(),
                    id: *id,
                    peer_address: peer_address.clone(),
                    learner: *learner,
                })
                .await?;
            let what = if *learner { " as a learner" } else { "" };
            done(out, &format!("member {id} added{what}"));
        }
        Command::Member {
            action: action @ (MemberAction::Promote { id } | MemberAction::Demote { id }),
        } => {
            let learner = matches!(action, MemberAction::Demote { .. });
            client
                .set_member_role(pb::SetMemberRoleRequest { id: *id, learner })
                .await?;
            let role = if learner { "a learner" } else { "a voter" };
            done(out, &format!("member {id} is {role}"));
        }
        Command::Member {
            action: MemberAction::Remove { id },
        } => {
            client
                .remove_member(pb::RemoveMemberRequest { id: *id })
                .await?;
            done(out, &format!("member {id} removed"));
        }
        Command::Vips => {
            let r = client.list_vips(pb::ListVipsRequest {}).await?.into_inner();
            let (announcers, unreachable) = announcers(client, tls).await?;
            let by = |vip: &str| -> Vec<u64> {
                announcers
                    .iter()
                    .filter(|(_, vips)| vips.contains(vip))
                    .map(|(id, _)| *id)
                    .collect()
            };
            match out {
                Output::Json => out!(
                    "{}",
                    json!({
                        "vips": r.vips.iter().map(|v| json!({"vip": v.vip, "owner": v.owner, "services": v.services, "announced_here": v.announced_here, "announced_by": by(&v.vip), "routed_by": v.routed_by})).collect::<Vec<_>>(),
                        "drained": r.drained,
                        "unreachable": unreachable.iter().map(|(id, e)| json!({"member": id, "error": e})).collect::<Vec<_>>(),
                    })
                ),
                Output::Table => {
                    out!(
                        "{:<40} {:<6} {:<13} SERVICES",
                        "VIP",
                        "OWNER",
                        "ANNOUNCED BY"
                    );
                    for v in &r.vips {
                        let owner = if v.owner == 0 {
                            "none".to_owned()
                        } else {
                            v.owner.to_string()
                        };
                        let by = by(&v.vip);
                        let by = if v.routed_by.starts_with("service CIDR") {
                            // Never announced on its own.
                            "-".to_owned()
                        } else if by.is_empty() {
                            "nobody".to_owned()
                        } else {
                            by.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                        };
                        let mut what = v.services.join(",");
                        if !v.routed_by.is_empty() {
                            if !what.is_empty() {
                                what.push(' ');
                            }
                            what.push_str(&format!("({})", v.routed_by));
                        }
                        out!("{:<40} {:<6} {:<13} {}", v.vip, owner, by, what);
                    }
                    for (id, e) in &unreachable {
                        out!("member {id} not asked: {e}");
                    }
                    if !r.drained.is_empty() {
                        out!("drained members: {:?}", r.drained);
                    }
                }
            }
        }
        Command::Member {
            action: action @ (MemberAction::Drain { id } | MemberAction::Undrain { id }),
        } => {
            let drained = matches!(action, MemberAction::Drain { .. });
            client
                .drain_member(pb::DrainMemberRequest { id: *id, drained })
                .await?;
            let word = if drained { "drained" } else { "undrained" };
            done(out, &format!("member {id} {word}"));
        }
        Command::Snapshot => {
            let r = client
                .trigger_snapshot(pb::TriggerSnapshotRequest {})
                .await?
                .into_inner();
            done(
                out,
                &format!("snapshot at applied index {}", r.applied_index),
            );
        }
        Command::Events => {
            let request = client.watch_events(pb::WatchEventsRequest {});
            let answer = match first_answer {
                Some(t) => tokio::time::timeout(t, request).await.map_err(|_| {
                    tonic::Status::deadline_exceeded(format!("no answer within {t:?}"))
                })?,
                None => request.await,
            };
            let mut stream = answer?.into_inner();
            while let Some(event) = stream.message().await? {
                match out {
                    Output::Json => out!(
                        "{}",
                        json!({"time": rfc3339(event.unix_ms), "unix_ms": event.unix_ms, "kind": event.kind, "message": event.message, "revision": event.revision})
                    ),
                    Output::Table => {
                        out!(
                            "{} {:<9} {}",
                            clock(event.unix_ms),
                            event.kind,
                            event.message
                        )
                    }
                }
            }
        }
        Command::Completion { .. } => {}
    }
    Ok(())
}

fn done(out: Output, message: &str) {
    match out {
        Output::Json => out!("{}", json!({ "result": message })),
        Output::Table => out!("{message}"),
    }
}

/// Which VIPs each member announces now, asking every member whose admin
/// address the answering member knows (a standalone member: itself only);
/// and the members that could not be asked, with why.
type Announcers = (
    std::collections::BTreeMap<u64, std::collections::BTreeSet<String>>,
    Vec<(u64, String)>,
);

async fn announcers(
    client: &mut AdminClient<Channel>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Announcers, tonic::Status> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    let here = |r: pb::ListVipsResponse| -> std::collections::BTreeSet<String> {
        r.vips
            .into_iter()
            .filter(|v| v.announced_here)
            .map(|v| v.vip)
            .collect()
    };
    let mut announcers = std::collections::BTreeMap::new();
    let mut unreachable = Vec::new();
    let Some(cluster) = status.cluster else {
        let r = client.list_vips(pb::ListVipsRequest {}).await?.into_inner();
        announcers.insert(status.node_id, here(r));
        return Ok((announcers, unreachable));
    };
    for member in cluster.members {
        if member.id == status.node_id {
            let r = client.list_vips(pb::ListVipsRequest {}).await?.into_inner();
            announcers.insert(member.id, here(r));
            continue;
        }
        if member.admin_address.is_empty() {
            unreachable.push((member.id, "its admin address is not known".to_owned()));
            continue;
        }
        let endpoint = format!("http://{}", member.admin_address);
        let answer = match connect(&endpoint, tls.clone()).await {
            Ok(channel) => AdminClient::new(channel)
                .list_vips(pb::ListVipsRequest {})
                .await
                .map_err(|s| format!("{endpoint}: {}", s.message())),
            Err(e) => Err(format!("{endpoint}: {e}")),
        };
        match answer {
            Ok(r) => {
                announcers.insert(member.id, here(r.into_inner()));
            }
            Err(e) => unreachable.push((member.id, e)),
        }
    }
    Ok((announcers, unreachable))
}
