//! Where desired state comes from. A source runs only where it may propose
//! (the single standalone member, or the Raft leader), turns what it reads
//! into `Command`s and proposes only differences.
//!
//! - `file`: the standalone services file.
//! - `kubernetes`: Services, EndpointSlices (and, for pod routes, Nodes)
//!   from the API server.

pub mod file;

/// What a source last did, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// "file" or "kubernetes".
    pub kind: &'static str,
    /// The file path or API server address.
    pub location: String,
    /// Unix milliseconds of the last successful load; 0 if none yet.
    pub last_loaded_unix_ms: i64,
    /// Empty when the last load succeeded.
    pub last_error: String,
    /// Unix milliseconds since when the source is unreachable (the API
    /// server); 0 when reachable.
    pub disconnected_since_unix_ms: i64,
}
pub mod kubernetes;
