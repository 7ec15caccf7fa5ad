//! lb-node: one member of the load-balancer appliance.
//!
//! See ARCHITECTURE.md for the shape; `app` wires the tasks together.

pub mod dataplane;
pub mod model;
