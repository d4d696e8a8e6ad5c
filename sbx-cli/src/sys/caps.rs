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
    drop_bounding(|cap| !keep.contains(&cap))?;
    caps::clear(None, CapSet::Ambient).step(|| "clear ambient capabilities".into())?;
    // One capget and one capset for the three sets (the crate reads and writes all three for
    // each set it changes). Each set keeps what it has of `KEEP`.
    let keep_mask = KEEP.iter().fold(0u64, |m, c| m | c.bitmask());
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(), CapData::default()];
    // SAFETY: `header` and `data` are live for the calls and of the layout capget(2) and
    // capset(2) take for version 3 (two data structs, the low and the high 32 capabilities).
    let result = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_mut(&mut header),
            data.as_mut_ptr(),
        )
    };
    if result != 0 {
        return Err(SysError::new(
            "read the capabilities (capget)",
            std::io::Error::last_os_error(),
        ));
    }
    for (half, d) in data.iter_mut().enumerate() {
        let keep = (keep_mask >> (32 * half)) as u32;
        d.effective &= keep;
        d.permitted &= keep;
        d.inheritable &= keep;
    }
    // SAFETY: as above.
    let result = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::from_mut(&mut header),
            data.as_ptr(),
        )
    };
    if result != 0 {
        return Err(SysError::new(
            "set the kept capabilities (capset)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops from the bounding set each capability `doomed` picks (dropping one the set lacks is a
/// no-op for the kernel, so none is read first).
fn drop_bounding(doomed: impl Fn(Capability) -> bool) -> Result<(), SysError> {
    for cap in caps::all() {
        if doomed(cap) {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
            let result = unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(cap.index()),
                    0,
                    0,
                    0,
                )
            };
            // EINVAL: a capability this kernel does not know.
            if result != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(SysError::new(
                    format!("drop {cap} from the bounding set"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
    }
    Ok(())
}

/// Drops the whole bounding set: for a command that runs as an ordinary user, no exec may gain
/// any capability.
pub fn drop_bounding_set() -> Result<(), SysError> {
    drop_bounding(|_| true)
}

/// Whether this process can set up sandboxes: the capabilities sbx itself needs.
pub fn missing_for_sbx() -> Vec<Capability> {
    [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN]
        .into_iter()
        .filter(|c| !caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
        .collect()
}
