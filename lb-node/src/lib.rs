//! lb-node: one member of the load-balancer appliance.
//!
//! docs/architecture.md maps the modules; [`app`] wires the tasks
//! together.
//!
//! - [`model`]: the replicated service table (pure);
//! - [`dataplane`]: plan and program the kernel's table;
//! - [`health`]: active health checks of backends, agreed through the log;
//! - [`source`]: where desired state comes from;
//! - [`replication`]: how commands become committed state;
//! - [`announce`]: telling the network where the VIPs are (L2, BGP);
//! - [`netlink`]: the member's one rtnetlink connection;
//! - [`admin`]: the gRPC admin API;
//! - [`config`]: the member's configuration file;
//! - [`clock`]: the wall clock in the units the state carries.

pub mod admin;
pub mod announce;
pub mod app;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod exporter;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod netlink_batch;
pub mod nft;
pub mod nft_sets;
pub mod replication;
pub mod route_batch;
pub mod runtime_lag;
pub mod serving;
pub mod source;
pub mod thread_time;
