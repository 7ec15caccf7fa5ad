//! The appliance's one versioned wire format: the replicated log entry and
//! snapshot (`lb.state.v1`) and the admin API (`lb.admin.v1`).
//!
//! This crate only holds generated code. Conversions to and from the
//! validated model types live in `lb-node`, beside the model.

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

pub use prost;
pub use prost::Message;
