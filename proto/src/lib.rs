//! The appliance's one versioned wire format: the replicated log entry and
//! snapshot (`lb.state.v1`) and the admin API (`lb.admin.v1`).
//!
//! This crate holds generated code, and the admin API's typed error
//! details (`errors`), which the member writes and `lbctl` reads.
//! Conversions to and from the validated model types live in `lb-node`,
//! beside the model.

#![allow(missing_docs, clippy::all)]

pub mod state {
    pub mod v1 {
        tonic::include_proto!("lb.state.v1");
    }
}

pub mod peer {
    pub mod v1 {
        tonic::include_proto!("lb.peer.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("lb.admin.v1");
    }
}

/// The standard gRPC health protocol, for the appliance's gRPC probes
/// (and the test backends that answer them).
pub mod grpc_health {
    pub mod v1 {
        tonic::include_proto!("grpc.health.v1");
    }
}

/// Typed details of the admin API's errors, in the standard gRPC error
/// model (a `google.rpc.ErrorInfo` in the status details), so that a
/// client acts on fields rather than on the wording of a message.
pub mod errors {
    use std::collections::HashMap;

    use tonic_types::{ErrorDetails, StatusExt as _};

    /// The `ErrorInfo.domain` of every lb-node error.
    pub const DOMAIN: &str = "lb-node.admin";
    /// `ErrorInfo.reason` of a write sent to a member that does not lead.
    pub const NOT_LEADER: &str = "NOT_LEADER";

    /// Who leads, as a follower that refused a write knows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NotLeader {
        /// The leader's member id; 0 when none is known.
        pub leader: u64,
        /// Where the leader's admin API is (`HOST:PORT`), when known.
        pub leader_admin: Option<String>,
    }

    /// The FAILED_PRECONDITION a follower answers a write with.
    pub fn not_leader(message: String, who: &NotLeader) -> tonic::Status {
        let mut metadata = HashMap::from([("leader".to_owned(), who.leader.to_string())]);
        if let Some(admin) = &who.leader_admin {
            metadata.insert("leader_admin".to_owned(), admin.clone());
        }
        tonic::Status::with_error_details(
            tonic::Code::FailedPrecondition,
            message,
            ErrorDetails::with_error_info(NOT_LEADER, DOMAIN, metadata),
        )
    }

    /// The leader a refused write names, if `status` is such a refusal.
    pub fn not_leader_of(status: &tonic::Status) -> Option<NotLeader> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN || info.reason != NOT_LEADER {
            return None;
        }
        Some(NotLeader {
            leader: info.metadata.get("leader")?.parse().ok()?,
            leader_admin: info.metadata.get("leader_admin").cloned(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_refusal_reads_back_and_other_errors_are_not_one() {
            for who in [
                NotLeader {
                    leader: 2,
                    leader_admin: Some("10.0.0.2:9443".into()),
                },
                NotLeader {
                    leader: 0,
                    leader_admin: None,
                },
            ] {
                let status = not_leader("not the leader".into(), &who);
                assert_eq!(status.code(), tonic::Code::FailedPrecondition);
                assert_eq!(not_leader_of(&status), Some(who));
            }
            // The same wording without the detail is not a redirect.
            let plain = tonic::Status::failed_precondition(
                "this member is not the leader (leader: 2); leader admin API at 10.0.0.2:9443",
            );
            assert_eq!(not_leader_of(&plain), None);
            let other = tonic::Status::with_error_details(
                tonic::Code::FailedPrecondition,
                "x",
                ErrorDetails::with_error_info(NOT_LEADER, "another.domain", HashMap::new()),
            );
            assert_eq!(not_leader_of(&other), None);
        }
    }
}

pub use prost;
pub use prost::Message;
