//! The bpf(2) calls sbx makes itself, beside what aya does: attaching pinned programs through
//! links, and batch writes and removals of map entries. aya opens a pinned program only after
//! probing the kernel's features (BTF loads, test programs and maps: milliseconds on every
//! run), and it has no batch operations.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Commands of `enum bpf_cmd` (linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Where a cgroup program runs: `enum bpf_attach_type` (linux/bpf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    Ingress = 0,
    Egress = 1,
    SockCreate = 2,
    Bind4 = 8,
    Bind6 = 9,
    Connect4 = 10,
    Connect6 = 11,
    SendMsg4 = 14,
    SendMsg6 = 15,
}

/// bpf(2) with `attr`, a command's member of the kernel's `union bpf_attr` (whose bytes past
/// the member must be zero: the structs below end in zeroed space).
fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable `#[repr(C)]` member of `union bpf_attr` of the given
    // size; pointers inside it are valid for the call (each caller says which).
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// A new descriptor from a successful call that returns one.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _zero: u32,
}

/// Opens the program or map pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _zero: [u64; 4],
}

/// Attaches `program` to the cgroup open at `cgroup` through a new link, which detaches it when
/// the returned descriptor is closed (with this process, at the latest).
pub fn link_create(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    at: AttachType,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: at as u32,
        ..LinkCreateAttr::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How far a batch got: the kernel stops at the first entry it cannot take.
pub struct Outcome {
    pub done: usize,
    pub error: Option<io::Error>,
}

impl Outcome {
    pub fn ok(self) -> io::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

fn batch(
    command: libc::c_long,
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Outcome {
    if count == 0 {
        return Outcome {
            done: 0,
            error: None,
        };
    }
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // The kernel reads `count` keys (and values) and writes back in `count` how many it took.
    match bpf(command, &mut attr) {
        Ok(_) => Outcome {
            done: count,
            error: None,
        },
        Err(e) => Outcome {
            done: attr.count as usize,
            error: Some(e),
        },
    }
}

/// A map whose key and value types are known: batch calls take keys and values of exactly
/// those types, so the kernel reads whole entries of the sizes it expects.
pub trait TypedMap {
    type Key: aya::Pod;
    type Value: aya::Pod;
    fn data(&self) -> &aya::maps::MapData;
}

impl<K: aya::Pod, V: aya::Pod> TypedMap for aya::maps::HashMap<aya::maps::MapData, K, V> {
    type Key = K;
    type Value = V;
    fn data(&self) -> &aya::maps::MapData {
        aya::maps::IterableMap::map(self)
    }
}

impl<K: aya::Pod, V: aya::Pod> TypedMap for aya::maps::LpmTrie<aya::maps::MapData, K, V> {
    type Key = aya::maps::lpm_trie::Key<K>;
    type Value = V;
    fn data(&self) -> &aya::maps::MapData {
        aya::maps::IterableMap::map(self)
    }
}

/// Writes `values[i]` under `keys[i]` into `map`, in order: one system call for a whole
/// policy's entries instead of one per entry.
pub fn update_batch<M: TypedMap>(map: &M, keys: &[M::Key], values: &[M::Value]) -> Outcome {
    assert_eq!(keys.len(), values.len(), "a value for every key");
    use std::os::fd::AsFd as _;
    batch(
        BPF_MAP_UPDATE_BATCH,
        map.data().fd().as_fd(),
        keys.as_ptr().cast(),
        values.as_ptr().cast(),
        keys.len(),
    )
}

/// Writes `entries` into `map`, in order.
pub fn update_entries<M: TypedMap>(map: &M, entries: &[(M::Key, M::Value)]) -> Outcome {
    let (keys, values): (Vec<M::Key>, Vec<M::Value>) = entries.iter().copied().unzip();
    update_batch(map, &keys, &values)
}

/// Removes `keys` from `map`; stops at the first that is not there.
pub fn delete_batch<M: TypedMap>(map: &M, keys: &[M::Key]) -> io::Result<()> {
    use std::os::fd::AsFd as _;
    batch(
        BPF_MAP_DELETE_BATCH,
        map.data().fd().as_fd(),
        keys.as_ptr().cast(),
        std::ptr::null(),
        keys.len(),
    )
    .ok()
}

/// Whether the kernel has bpf(2) at all (a kernel built without it answers ENOSYS).
pub fn syscall_exists() -> bool {
    // SAFETY: an invalid command reads no memory; the kernel only answers whether it exists.
    let result = unsafe { libc::syscall(libc::SYS_bpf, -1i64, 0usize, 0u32) };
    result >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}
