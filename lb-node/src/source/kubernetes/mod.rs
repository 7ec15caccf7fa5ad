//! The Kubernetes source: the leader watches Services and EndpointSlices
//! and proposes the virtual services they mean.
//!
//! - `translate`: pure: Kubernetes objects to model services.
//!
//! The watch itself (kube-rs, resume from the replicated cursor, batching)
//! comes with the rest of the Kubernetes source.

pub mod translate;
