//! Landlock scoping of the sandboxed command: what it can reach of IPC that names no network
//! address and so passes every network hook.

use landlock::{CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetStatus, Scope};

use super::{Step, SysError};

/// Confines this process (and what it executes) to the abstract unix sockets created inside
/// its Landlock domain: those of the host (`@/tmp/.X11-unix/X0`, a D-Bus bus, a tmux server)
/// can no longer be connected or sent to. The abstract namespace belongs to the network
/// namespace, so a sandbox with a network namespace of its own has none of the host's to
/// reach; one in the host's network namespace needs this, Landlock ABI 6 (Linux 6.12).
/// Returns whether the kernel enforces it.
pub fn scope_abstract_unix_sockets(required: bool) -> Result<bool, SysError> {
    let level = if required {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let status = Ruleset::default()
        .set_compatibility(level)
        .scope(Scope::AbstractUnixSocket)
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .step(|| {
            "confine abstract unix sockets to the sandbox (Landlock scopes, Linux 6.12 or newer)"
                .into()
        })?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}

/// The Landlock ABI version the kernel offers; 0 where Landlock is missing or switched off.
pub fn abi_version() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with this flag and no attribute the call creates nothing and only answers the
    // version (or an error).
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version.max(0)
}

/// The first ABI with scopes (`LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET`).
pub const SCOPES_ABI: i64 = 6;
