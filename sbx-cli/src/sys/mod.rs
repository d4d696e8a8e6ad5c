//! Kernel interfaces, each wrapped once: namespaces, mounts, capabilities, system-call
//! filters, Landlock, sysctls, file locks, bpf, signals, files written for the user.
//! Errors say which step failed.

pub mod bpf;
pub mod caps;
pub mod cgroup;
pub mod clock;
pub mod fd;
pub mod file;
pub mod landlock;
pub mod mount;
pub mod netlink;
pub mod netns;
pub mod seccomp;
pub mod signal;
pub mod spawn;
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

/// `Result::map_err` with the step's name; the error's sources (the kernel's errno behind a
/// library's error, say) are kept in the message.
pub trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, SysError>;
}

impl<T, E: std::error::Error> Step<T> for Result<T, E> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, SysError> {
        self.map_err(|e| {
            let mut cause = e.to_string();
            let mut source = e.source();
            while let Some(inner) = source {
                let text = inner.to_string();
                if !cause.contains(&text) {
                    cause.push_str(": ");
                    cause.push_str(&text);
                }
                source = inner.source();
            }
            SysError::new(step(), cause)
        })
    }
}
