//! Kernel interfaces, each wrapped once: namespaces, capabilities, sysctls, file locks. Errors
//! say which step failed.

pub mod caps;
pub mod netns;
pub mod sysctl;

use std::fmt;

/// A failed system step: what sbx was doing, and what the kernel said.
#[derive(Debug)]
pub struct SysError {
    pub step: String,
    pub cause: String,
}

impl SysError {
    pub fn new(step: impl Into<String>, cause: impl fmt::Display) -> SysError {
        SysError {
            step: step.into(),
            cause: cause.to_string(),
        }
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)
    }
}

impl std::error::Error for SysError {}

/// `Result::map_err` with the step's name.
pub trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, SysError>;
}

impl<T, E: fmt::Display> Step<T> for Result<T, E> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, SysError> {
        self.map_err(|e| SysError::new(step(), e))
    }
}
