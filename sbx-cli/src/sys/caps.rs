//! Capabilities the sandboxed command keeps when it runs as root.
//!
//! The keep-list is Docker's default set minus NET_RAW and MKNOD: enough for builds that chown,
//! bind low ports or switch users, and nothing that could reach sbx's enforcement (no
//! NET_ADMIN, SYS_ADMIN, BPF, SYS_MODULE, SYS_PTRACE, DAC_READ_SEARCH, …).

use caps::{CapSet, Capability, CapsHashSet};

use super::{Step, SysError};

pub const KEEP: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETFCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
];

/// Drops every capability outside [`KEEP`] from all sets of this process, the bounding set
/// included, so that no exec (setuid-root binaries included) brings one back.
pub fn drop_all_but_keep() -> Result<(), SysError> {
    let keep: CapsHashSet = KEEP.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .step(|| format!("drop {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).step(|| "clear ambient capabilities".into())?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let mut current = caps::read(None, set).step(|| format!("read {set:?} capabilities"))?;
        current.retain(|c| keep.contains(c));
        caps::set(None, set, &current).step(|| format!("set {set:?} capabilities"))?;
    }
    Ok(())
}

/// Drops the whole bounding set: for a command that runs as an ordinary user, no exec may gain
/// any capability.
pub fn drop_bounding_set() -> Result<(), SysError> {
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .step(|| format!("drop {cap} from the bounding set"))?;
        }
    }
    Ok(())
}

/// Whether this process can set up sandboxes: the capabilities sbx itself needs.
pub fn missing_for_sbx() -> Vec<Capability> {
    [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN]
        .into_iter()
        .filter(|c| !caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
        .collect()
}
