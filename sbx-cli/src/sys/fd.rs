//! File descriptors the command inherits.

use std::os::fd::RawFd;

use super::{Step, SysError};

/// Closes every socket this process inherited above the standard streams. A socket made outside
/// the sandbox belongs to the host's network namespace and to a cgroup outside the sandbox's:
/// traffic on it passes every rule of both backends. Pipes and files (a make jobserver, a log
/// file) are left to the command.
pub fn close_inherited_sockets() -> Result<(), SysError> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .step(|| "list /proc/self/fd".into())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a whole stat into `stat` when it succeeds; a descriptor that was
        // the directory listing above, now closed, fails with EBADF.
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: initialised by the successful call above.
        let mode = unsafe { stat.assume_init() }.st_mode;
        if mode & libc::S_IFMT == libc::S_IFSOCK {
            // SAFETY: an inherited descriptor nothing in this process uses.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}
