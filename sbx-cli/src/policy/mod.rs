//! The Policy stage: read policy files, validate them, compose `extends`, and find likely
//! mistakes. The format is specified in docs/policy.md.
//!
//! ```text
//! file ──parse──▶ Document ──compose (extends)──▶ Composed ──mode required──▶ Policy
//!                   │                                │
//!                   └── per-file problems            └── lints (warnings)
//! ```

mod compose;
mod document;
pub mod entry;
mod lint;
pub mod name;
pub mod schema;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use compose::{Composed, Loader, missing_mode};
pub use document::{Document, parse as parse_document};
pub use entry::{Entry, PortRange, Ports, Protocol, Target};

use crate::diag::{FileId, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    None,
    Allowlist,
    Open,
}

impl Mode {
    fn parse(text: &str) -> Option<Mode> {
        match text {
            "none" => Some(Mode::None),
            "allowlist" => Some(Mode::Allowlist),
            "open" => Some(Mode::Open),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Allowlist => "allowlist",
            Mode::Open => "open",
        }
    }
}

/// Where a value was written: the file (as the user named it) and the span in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: FileId,
    pub path: Arc<str>,
    pub span: Span,
}

/// `path:line:column`, as compilers print positions.
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.span.start;
        write!(f, "{}:{}:{}", self.path, start.line, start.column)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

/// One entry of `allow` or `deny` and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub entry: Entry,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "addr")]
pub enum DnsServer {
    /// The name servers of the host's /etc/resolv.conf.
    System,
    Addr(SocketAddr),
}

impl fmt::Display for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsServer::System => f.write_str("system"),
            DnsServer::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnResolveFailure {
    Error,
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<DnsServer>,
    pub timeout: Duration,
    /// How long an address sbx's DNS service answered stays reachable past the answer's TTL.
    pub grace: Duration,
    pub attempts: u32,
    pub on_resolve_failure: OnResolveFailure,
    /// Where each setting was written, for `sbx diff`.
    pub origins: DnsOrigins,
}

/// Where each `dns` setting of a composed policy was written; `None` (or no servers) for a
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsOrigins {
    /// One per server of [`Dns::servers`], in order; empty when they are the default.
    pub servers: Vec<Origin>,
    pub timeout: Option<Origin>,
    pub grace: Option<Origin>,
    pub attempts: Option<Origin>,
    pub on_resolve_failure: Option<Origin>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: vec![DnsServer::System],
            timeout: Duration::from_secs(2),
            grace: Duration::from_secs(30),
            attempts: 2,
            on_resolve_failure: OnResolveFailure::Error,
            origins: DnsOrigins::default(),
        }
    }
}

/// A composed, valid policy with a mode: what the Plan stage consumes.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub description: Option<String>,
    pub mode: Sourced<Mode>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub dns: Dns,
    /// Every file that went into the policy, extended files first.
    pub files: Vec<Arc<str>>,
}

impl Policy {
    /// Every host name of `allow` and `deny` (not wildcards), sorted, each once: what is
    /// resolved ahead of time.
    pub fn host_names(&self) -> std::collections::BTreeSet<String> {
        self.allow
            .iter()
            .chain(&self.deny)
            .filter_map(|r| match &r.entry.target {
                Target::Host(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

fn is_yaml(path: &std::path::Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// `NAME.test.yaml` (or `.yml`): the expectations `sbx test` checks a policy against.
pub fn is_policy_test(path: &std::path::Path) -> bool {
    is_yaml(path)
        && path.file_stem().is_some_and(|stem| {
            std::path::Path::new(stem)
                .extension()
                .is_some_and(|e| e == "test")
        })
}

/// A file that a directory search takes for a policy: YAML, and not a policy test.
pub fn is_policy_file(path: &std::path::Path) -> bool {
    is_yaml(path) && !is_policy_test(path)
}
