//! Where desired state comes from. A source runs only where it may propose
//! (the single standalone member, or the Raft leader), turns what it reads
//! into `Command`s and proposes only differences.
//!
//! - `file`: the standalone services file.
//! - `kubernetes`: Services, EndpointSlices (and, for pod routes, Nodes)
//!   from the API server.
//! - `leader`: runs the configured one where it may propose.

pub mod file;
pub mod leader;

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
    /// Objects or fields left out and updates rejected since this source
    /// started (on the leader), and the last few (Unix ms, what).
    pub warnings: u64,
    pub recent_warnings: Vec<(i64, String)>,
}

/// How many recent warnings a source keeps for `lbctl status`.
pub const RECENT_WARNINGS: usize = 10;

impl SourceStatus {
    /// Counts `warnings` seen at `unix_ms`, keeping the last few.
    pub fn note_warnings(&mut self, warnings: &[String], unix_ms: i64) {
        self.warnings += warnings.len() as u64;
        let skip = warnings.len().saturating_sub(RECENT_WARNINGS);
        self.recent_warnings
            .extend(warnings.iter().skip(skip).map(|w| (unix_ms, w.clone())));
        let excess = self.recent_warnings.len().saturating_sub(RECENT_WARNINGS);
        self.recent_warnings.drain(..excess);
    }
}
pub mod kubernetes;
