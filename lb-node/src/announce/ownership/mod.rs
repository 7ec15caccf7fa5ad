//! Who may announce what (docs/announcement.md): the lease a member holds
//! from its peers, whoever leads (`lease`). The replica feeds it what its
//! peers say and asks it; the committed VIP owners come from the state
//! (`model::assign_owners`, computed by the leader).
//!
//! Must not: talk to the network or the kernel, or read a clock. Ticks in,
//! answers out.

mod lease;

pub use lease::Lease;
