//! Who may announce what (docs/announcement.md), in one place:
//!
//! - `assign`: which member owns which VIP, a pure function of the VIPs,
//!   the eligible members and the current owners (the leader commits it);
//! - `lease`: whether a member may go on announcing, from what its peers
//!   heard of it, whoever leads;
//! - `member`: one member's rules over both (`Ownership`): what it
//!   announces and serves, and on the leader the owners to propose, with
//!   the two-commit move and the takeover wait; the replica feeds it a
//!   small view of Raft (`RaftView`) and the applied state;
//! - `gate`: the dataplane's synced revision before a VIP is announced
//!   (`AnnounceGate`), and BGP owner mode's make before break (`Linger`).
//!
//! Must not: talk to the network or the kernel, read a clock, or call
//! raft-rs. Ticks and instants in, answers out.

mod assign;
mod gate;
mod lease;
mod member;

pub use assign::{AnnounceScope, assign_owners};
pub use gate::{AnnounceGate, Linger};
pub use lease::Lease;
pub use member::{Owners, Ownership, OwnershipConfig, RaftView, Stamp};
