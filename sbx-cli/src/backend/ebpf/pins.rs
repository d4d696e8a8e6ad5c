//! The object, its programs and maps pinned once in sbx's bpffs, and what `sbx doctor`
//! reads of them.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData};
use aya::programs::{CgroupSkb, CgroupSock, CgroupSockAddr};

use super::maps::Maps;
use crate::state::STATE_DIR;
use crate::sys::bpf::AttachType;
use crate::sys::{Step, SysError};

pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../ebpf/sbx.bpf.o");

pub(super) const SOCK_ADDR_PROGRAMS: [(&str, AttachType); 6] = [
    ("connect4", AttachType::Connect4),
    ("connect6", AttachType::Connect6),
    ("sendmsg4", AttachType::SendMsg4),
    ("sendmsg6", AttachType::SendMsg6),
    ("bind4", AttachType::Bind4),
    ("bind6", AttachType::Bind6),
];
pub(super) const SOCK_PROGRAMS: [(&str, AttachType); 1] = [("sock_create", AttachType::SockCreate)];
pub(super) const SKB_PROGRAMS: [(&str, AttachType); 2] = [
    ("ingress", AttachType::Ingress),
    ("egress", AttachType::Egress),
];
/// How many programs sbx pins.
pub const PROGRAMS: usize = SOCK_ADDR_PROGRAMS.len() + SOCK_PROGRAMS.len() + SKB_PROGRAMS.len();
/// The maps sbx pins, each of a fixed maximum size (`OWNERS` and `HELD` are socket-local
/// storage: their entries live and die with the sockets of sandboxes).
pub use sbx_common::MAPS;

/// The bpffs where sbx pins its programs and maps.
pub fn bpf_dir() -> PathBuf {
    Path::new(STATE_DIR).join("bpf")
}

/// The pins of this build of sbx: a directory per object, so that two versions of sbx never
/// share maps whose layout differs.
pub(super) fn pins() -> PathBuf {
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| {
        OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    });
    bpf_dir().join(format!("{hash:016x}"))
}

/// The cgroup v2 mount, from /proc/self/mountinfo (never assumed: it is
/// /sys/fs/cgroup/unified on hybrid systems, /sys/fs/cgroup on unified ones).
pub fn cgroup2_mount() -> Result<PathBuf, SysError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .step(|| "read /proc/self/mountinfo".into())?;
    info.lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount_point = mount.split(' ').nth(4)?;
            (fs.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            SysError::new(
                "find the cgroup v2 mount",
                "no cgroup2 file system is mounted",
            )
        })
}

pub(super) fn sandbox_cgroup(slot: u32) -> Result<PathBuf, SysError> {
    Ok(cgroup2_mount()?.join("sbx").join(slot.to_string()))
}

/// Whether a bpf file system is mounted at `path` (one statfs, no mount table to read).
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mounts sbx's bpffs and loads and pins the programs and maps, unless that is done already.
pub(super) fn ensure_loaded() -> Result<(), SysError> {
    let dir = bpf_dir();
    if !is_bpffs(&dir) {
        std::fs::create_dir_all(&dir).step(|| format!("create {}", dir.display()))?;
        nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .step(|| format!("mount a bpf file system on {}", dir.display()))?;
    }
    let done = pins();
    if done.exists() {
        return Ok(());
    }
    // Pinned into a directory of its own and renamed into place when complete (the caller holds
    // sbx's lock): a load that fails half-way (a program the kernel's verifier refuses, say)
    // leaves no directory that looks loaded, and the next run reports the real error again
    // instead of "File exists".
    // (bpffs refuses names with a `.`.)
    let pins = bpf_dir().join(format!(
        "{}-loading",
        done.file_name().expect("a hash").to_string_lossy()
    ));
    if pins.exists() {
        std::fs::remove_dir_all(&pins).step(|| format!("remove {}", pins.display()))?;
    }
    std::fs::create_dir_all(&pins).step(|| format!("create {}", pins.display()))?;
    let mut ebpf = aya::Ebpf::load(OBJECT).step(|| "load sbx's eBPF programs".into())?;
    // Verifies, loads and pins each program of a list, as the aya type its hook takes.
    macro_rules! load_and_pin {
        ($kind:ty, $programs:expr) => {
            for (name, _) in $programs {
                let program: &mut $kind = ebpf
                    .program_mut(name)
                    .ok_or_else(|| {
                        SysError::new(format!("find program {name}"), "missing from the object")
                    })?
                    .try_into()
                    .step(|| format!("program {name}"))?;
                program
                    .load()
                    .step(|| format!("verify and load program {name}"))?;
                program
                    .pin(pins.join(format!("prog_{name}")))
                    .step(|| format!("pin program {name}"))?;
            }
        };
    }
    load_and_pin!(CgroupSockAddr, SOCK_ADDR_PROGRAMS);
    load_and_pin!(CgroupSock, SOCK_PROGRAMS);
    load_and_pin!(CgroupSkb, SKB_PROGRAMS);
    // One list of names (sbx-common) for the programs, the loader and the tests: an object
    // whose maps differ would leave some unpinned or missing.
    let mut found: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    let mut listed = MAPS.to_vec();
    found.sort_unstable();
    listed.sort_unstable();
    if found != listed {
        return Err(SysError::new(
            "load sbx's eBPF programs",
            format!("the object's maps {found:?} are not sbx_common::MAPS {listed:?}"),
        ));
    }
    for name in MAPS {
        ebpf.map(name)
            .ok_or_else(|| SysError::new(format!("find map {name}"), "missing from the object"))?
            .pin(pins.join(format!("map_{name}")))
            .step(|| format!("pin map {name}"))?;
    }
    std::fs::rename(&pins, &done)
        .step(|| format!("rename {} to {}", pins.display(), done.display()))
}

/// Removes the pins of other builds of sbx (an upgrade leaves the old ones, and their maps hold
/// kernel memory). Only when no sandbox is live: one of an older sbx may be using them.
pub(super) fn remove_other_versions() {
    let ours = pins();
    let Ok(entries) = std::fs::read_dir(bpf_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != ours && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

pub(super) fn pinned_map(name: &str) -> Result<Map, SysError> {
    let data = MapData::from_pin(pins().join(format!("map_{name}")))
        .step(|| format!("open pinned map {name}"))?;
    Map::from_map_data(data).step(|| format!("open pinned map {name}"))
}

/// The kernel memory sbx's pinned maps hold, in bytes (`memlock` of each map's fdinfo), for
/// `sbx doctor`; `None` when nothing is pinned.
pub fn pinned_memory() -> Option<u64> {
    let mut total = None;
    for name in MAPS {
        let Ok(map) = MapData::from_pin(pins().join(format!("map_{name}"))) else {
            continue;
        };
        let fd = map.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let bytes = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *total.get_or_insert(0) += bytes;
    }
    total
}

/// The number of entries in each of sbx's pinned maps (for `sbx doctor`); empty when nothing is
/// pinned. With no sandbox live, every map must be empty.
pub fn pinned_entries() -> Vec<(&'static str, usize)> {
    let Ok(maps) = Maps::open() else {
        return Vec::new();
    };
    vec![
        ("POLICIES", maps.policies.keys().count()),
        ("RULE_SETS", maps.rule_sets.keys().count()),
        ("ALLOW4", maps.allow4.keys().count()),
        ("DENY4", maps.deny4.keys().count()),
        ("ALLOW6", maps.allow6.keys().count()),
        ("DENY6", maps.deny6.keys().count()),
        ("TABLES", maps.tables.keys().count()),
        ("CHUNKS4", maps.chunks4.keys().count()),
        ("CHUNKS6", maps.chunks6.keys().count()),
        ("PEERS", maps.peers.keys().count()),
        ("ANSWERED4", maps.answered4.keys().count()),
        ("ANSWERED6", maps.answered6.keys().count()),
        ("LOST", maps.lost.keys().count()),
    ]
}
