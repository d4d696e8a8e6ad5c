//! The Backend stage: one trait, one implementation per enforcement mechanism. A backend turns a
//! Plan into kernel state for one sandbox, tells the Sandbox stage where to put the command, and
//! removes that state again.

pub mod ebpf;
pub mod nftables;
pub mod requirements;

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use crate::plan::Plan;
use crate::state::Locked;
use crate::sys::SysError;

/// Which backend a sandbox gets (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// A network namespace per sandbox, rules in nftables on the host side.
    Nftables,
    /// A cgroup per sandbox, judged by cgroup eBPF programs; no network namespace.
    Ebpf,
    /// eBPF where it can run (see `sbx doctor`), else nftables.
    Auto,
}

/// The backend `choice` names; `Auto` is eBPF where every eBPF requirement holds.
pub fn choose(choice: Choice) -> Box<dyn Backend> {
    let ebpf_usable = || requirements::ebpf().iter().all(|c| c.problem.is_none());
    match choice {
        Choice::Ebpf => Box::new(ebpf::Ebpf),
        Choice::Auto if ebpf_usable() => Box::new(ebpf::Ebpf),
        Choice::Nftables | Choice::Auto => Box::new(nftables::Nftables),
    }
}

pub trait Backend {
    fn name(&self) -> &'static str;

    /// The parts of `plan` this backend cannot enforce. sbx refuses to run such a plan rather
    /// than enforce less.
    fn refusals(&self, plan: &Plan) -> Vec<String>;

    /// What `setup` would apply, for `--dry-run`.
    fn describe(&self, plan: &Plan) -> String;

    /// Applies the plan for the sandbox in `slot`, observing as `observe` says. On error, nothing
    /// of it is left behind.
    fn setup(
        &self,
        plan: &Plan,
        observe: &Observe,
        slot: u32,
        locked: &Locked<'_>,
    ) -> Result<Box<dyn Enforced>, SysError>;

    /// Removes what a dead sbx left in `slot` (it may be nothing).
    fn clean_dead_slot(&self, slot: u32) -> Result<(), SysError>;
}

/// Where the command goes before it runs.
pub struct Placement<'a> {
    /// A network namespace to enter.
    pub netns: Option<BorrowedFd<'a>>,
    /// A cgroup (its directory) to start in.
    pub cgroup: Option<BorrowedFd<'a>>,
}

/// Makes the addresses of a DNS answer reachable, before sbx's DNS service sends the answer.
pub trait Admit: Send + Sync {
    /// Admits `addrs` for the name-rule `groups` (indices into `Plan::name_groups`) for `ttl`;
    /// an address admitted again gets the new expiry.
    fn admit(
        &self,
        groups: &[usize],
        addrs: &[std::net::IpAddr],
        ttl: std::time::Duration,
    ) -> Result<(), SysError>;
}

/// What a sandbox records and enforces beyond its plan (run options, not policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct Observe {
    /// Refuse nothing; report each would-be denial as a denial with `audit: true`.
    pub audit: bool,
    /// Report allowed TCP connects and UDP sends too (verdict allowed).
    pub allowed: bool,
    /// Serve DNS through sbx's DNS service also in open mode (so that sbx sees every
    /// question and answer); in allowlist mode it always does.
    pub dns: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

/// What was refused (a connection, send, socket or name), or allowed (a connection or send,
/// with `Observe::allowed`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// The process, as the host sees it (not known for a DNS query).
    pub pid: Option<u32>,
    pub command: Option<String>,
    pub destination: Option<std::net::IpAddr>,
    pub port: Option<u16>,
    /// IP protocol number (6 TCP, 17 UDP; for a refused socket, the one asked for).
    pub protocol: Option<u8>,
    /// Where it was refused: connect4/6, sendmsg4/6, bind4/6, sock_create, egress (a send on a
    /// UDP socket connected to a denied destination), nftables, or dns (a name the policy does
    /// not allow, asked of sbx's DNS service).
    pub hook: &'static str,
    /// For `dns`: the name asked, and the record type.
    pub name: Option<String>,
    pub record_type: Option<String>,
    pub verdict: Verdict,
    /// A denial that audit let through (`Observe::audit`).
    pub audit: bool,
    /// When it happened (as RFC 3339 UTC, to the millisecond).
    #[serde(serialize_with = "rfc3339")]
    pub time: std::time::SystemTime,
}

impl Event {
    pub fn denied(&self) -> bool {
        self.verdict == Verdict::Denied
    }
}

fn rfc3339<S: serde::Serializer>(time: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// The wall-clock time of `ns`, a `CLOCK_MONOTONIC` reading (what eBPF's `bpf_ktime_get_ns`
/// gives), by the distance between the two clocks now.
pub fn monotonic_to_system(ns: u64) -> std::time::SystemTime {
    let now = std::time::SystemTime::now();
    let monotonic = crate::sys::clock::monotonic_ns();
    let ago = std::time::Duration::from_nanos(monotonic.saturating_sub(ns));
    now.checked_sub(ago).unwrap_or(now)
}

/// Events a run keeps, at most: the rest are counted only. sbx runs as root, and a command that
/// connects in a loop must not make it use memory without bound (an event is about 200 bytes).
pub const EVENTS_KEPT: usize = 100_000;

/// A run's events: the first [`EVENTS_KEPT`], how many more there were, and how many the
/// kernel could not hand to sbx at all (its buffer for them was full).
#[derive(Debug)]
pub struct Kept<T> {
    pub items: Vec<T>,
    pub not_kept: u64,
    /// At least this many events were lost before sbx saw them.
    pub lost: u64,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            items: Vec::new(),
            not_kept: 0,
            lost: 0,
        }
    }
}

impl<T> Kept<T> {
    pub fn push(&mut self, item: T) {
        if self.items.len() < EVENTS_KEPT {
            self.items.push(item);
        } else {
            self.not_kept += 1;
        }
    }

    pub fn append(&mut self, other: Kept<T>) {
        self.not_kept += other.not_kept;
        self.lost += other.lost;
        self.extend(other.items);
    }
}

impl<T> Extend<T> for Kept<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

/// One sandbox's enforcement, live.
pub trait Enforced {
    /// What was refused (and allowed, with `Observe::allowed`), once the command has ended.
    /// Backends that cannot tell return nothing.
    fn events(&mut self) -> Kept<Event> {
        Kept::default()
    }

    fn placement(&self) -> Placement<'_>;

    /// Where sbx's DNS service for this sandbox must listen (allowlist mode, and open mode with
    /// `Observe::dns`); port 0 lets the kernel choose.
    fn dns_listen_address(&self) -> Option<SocketAddr>;

    /// What admits answered addresses (allowlist mode).
    fn admitter(&self) -> Option<std::sync::Arc<dyn Admit>>;

    /// Tells the backend where the DNS service listens, once it does.
    fn dns_bound(&mut self, at: SocketAddr) -> Result<(), SysError>;

    fn teardown(self: Box<Self>, locked: &Locked<'_>) -> Result<(), SysError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_events_are_counted_not_kept() {
        let mut first: Kept<usize> = Kept::default();
        first.extend(0..EVENTS_KEPT - 1);
        let mut second = Kept::default();
        second.extend(0..5);
        first.append(second);
        first.push(6);
        assert_eq!(first.items.len(), EVENTS_KEPT);
        assert_eq!(first.items.last(), Some(&0));
        assert_eq!(first.not_kept, 5);
    }
}
