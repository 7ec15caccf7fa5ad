//! The error of a configuration or services file: which file, which
//! field, which service, and what is wrong.
//!
//! Must not: import anything of the crate. The sections' own parsers
//! (health checks, announcement, the Kubernetes source) return it, and
//! the config module imports those.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error in a configuration or services file. Never retryable: the file
/// must be fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Path of the offending field, such as `service[1].backend[0].port`;
    /// empty when the file as a whole is the problem.
    pub field: String,
    /// The service's name, when the field belongs to one.
    pub service: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        if let Some(name) = &self.service {
            write!(f, " (service {name:?})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            field: field.into(),
            service: None,
            message: message.into(),
        }
    }
}
