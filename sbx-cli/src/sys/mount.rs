//! Mounts of the sandbox's own mount namespace: what the command sees of /proc, /sys, the
//! kernel's control file systems and sbx's state. Every call here changes this process's mount
//! namespace only; sbx calls them in `sbx __init`, after `unshare(CLONE_NEWNS)` and with every
//! mount made private, so the host's mounts stay as they are.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{Step, SysError};

/// Stops mount events crossing between this namespace and the one it was copied from, both
/// ways: what the sandbox mounts stays in the sandbox, and the host's later mounts stay out.
pub fn make_all_private() -> Result<(), SysError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .step(|| "make mounts private".into())
}

/// Mounts a proc file system of this process's PID namespace on /proc.
pub fn fresh_proc() -> Result<(), SysError> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .step(|| "mount /proc".into())
}

/// Binds the file `source` on `target`, read-only.
pub fn bind_file_read_only(source: &Path, target: &Path) -> Result<(), SysError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .step(|| format!("bind {} on {}", source.display(), target.display()))?;
    remount_read_only(target)
}

/// The host's device nodes the command gets: what programs expect of every system, and none
/// that reaches hardware or host-wide kernel state (loop devices, disks, consoles, kvm).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Replaces /dev with a read-only tmpfs holding [`DEVICES`] (bound from the host's), the
/// host's /dev/pts (so that the command keeps its terminal and can open new ones), an empty
/// /dev/shm of its own, and the usual links into /proc/self/fd. Needs /proc mounted.
pub fn private_dev() -> Result<(), SysError> {
    let dev = Path::new("/dev");
    let open = |name: &'static str, flags: OFlag| {
        let path = dev.join(name);
        nix::fcntl::open(
            &path,
            flags | OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(|fd| (name, fd))
    };
    // Held by descriptor while the new /dev covers them.
    let nodes: Vec<_> = DEVICES
        .iter()
        .filter_map(|n| open(n, OFlag::empty()))
        .collect();
    let pts = open("pts", OFlag::O_DIRECTORY);
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .step(|| "mount a tmpfs on /dev".into())?;
    let from = |fd: &std::os::fd::OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    for (name, fd) in &nodes {
        let target = dev.join(name);
        std::fs::File::create(&target).step(|| format!("create {}", target.display()))?;
        mount(
            Some(from(fd).as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step(|| format!("bind the host's {} into the sandbox", target.display()))?;
    }
    if let Some((_, fd)) = &pts {
        let target = dev.join("pts");
        std::fs::create_dir(&target).step(|| format!("create {}", target.display()))?;
        mount(
            Some(from(fd).as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .step(|| format!("bind the host's {} into the sandbox", target.display()))?;
    }
    // The pty multiplexer makes its pty in the devpts mounted at "pts" beside it, in the same
    // mount: so a node of this tmpfs, not a bind of the host's.
    let ptmx = dev.join("ptmx");
    nix::sys::stat::mknod(
        &ptmx,
        nix::sys::stat::SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(5, 2),
    )
    .step(|| format!("create {}", ptmx.display()))?;
    std::fs::set_permissions(&ptmx, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .step(|| format!("make {} usable by every user", ptmx.display()))?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).step(|| format!("create {}", shm.display()))?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .step(|| format!("mount a tmpfs on {}", shm.display()))?;
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .step(|| format!("link /dev/{link} to {to}"))?;
    }
    // Not nodev, unlike the other read-only mounts: /dev/ptmx is a node of this one.
    mount(
        None::<&str>,
        dev,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .step(|| "make /dev read-only".into())
}

/// Binds `path` onto itself and makes that bind read-only (and nosuid, nodev, noexec). A
/// process without CAP_SYS_ADMIN in this namespace's user namespace cannot make it writable
/// again, and a mount namespace made from this one inside a new user namespace gets it locked.
pub fn bind_read_only(path: &Path) -> Result<(), SysError> {
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .step(|| format!("bind {} onto itself", path.display()))?;
    remount_read_only(path)
}

/// Makes the mount at `path` (and nothing below it) read-only in this namespace.
pub fn remount_read_only(path: &Path) -> Result<(), SysError> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .step(|| format!("make {} read-only", path.display()))
}

/// Makes the mount at `path` and every mount below it read-only, in one call
/// (`mount_setattr(AT_RECURSIVE)`, Linux 5.12).
pub fn read_only_recursive(path: &Path) -> Result<(), SysError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .step(|| format!("make {} read-only", path.display()))?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path and a mount_attr of the size passed, both live for the call.
    let done = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
            &raw const attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if done < 0 {
        return Err(SysError::new(
            format!("make {} and the mounts below it read-only", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Hides what is at `path`: a file behind /dev/null, a directory behind an empty read-only
/// tmpfs. A path that does not exist is left alone.
pub fn mask(path: &Path) -> Result<(), SysError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        empty_read_only_tmpfs(path)
    } else if meta.file_type().is_symlink() {
        Ok(())
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step(|| format!("hide {}", path.display()))?;
        remount_read_only(path)
    }
}

/// Mounts an empty read-only tmpfs on the directory `path`, hiding what is below it.
pub fn empty_read_only_tmpfs(path: &Path) -> Result<(), SysError> {
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=0,mode=0555"),
    )
    .step(|| format!("hide {}", path.display()))
}

/// Takes the mount at `path` (and what is below it) out of this namespace.
pub fn detach(path: &Path) -> Result<(), SysError> {
    umount2(path, MntFlags::MNT_DETACH).step(|| format!("unmount {}", path.display()))
}

/// One line of /proc/self/mountinfo: where a file system is mounted, and its type.
pub struct MountPoint {
    pub path: String,
    pub fs_type: String,
}

/// The mounts of this process's namespace, parents before children (the kernel's order).
pub fn mounts() -> Result<Vec<MountPoint>, SysError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .step(|| "read /proc/self/mountinfo".into())?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            Some(MountPoint {
                path: unescape(mount.split(' ').nth(4)?),
                fs_type: fs.split(' ').next()?.to_string(),
            })
        })
        .collect())
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(super::unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }
}
