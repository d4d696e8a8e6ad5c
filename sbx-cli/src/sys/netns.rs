//! Network namespaces held by file descriptor, never by a name under /run/netns: when the last
//! holder (sbx, or a process inside) goes, the kernel removes the namespace and every link in
//! it, so a killed sbx leaves no namespace behind.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sched::{CloneFlags, setns, unshare};

use super::{Step, SysError};

pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    /// A new, empty network namespace (only a `lo`, down).
    pub fn new() -> Result<NetNs, SysError> {
        // unshare() moves the calling thread; a short-lived thread keeps the rest of sbx where
        // it is.
        std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET)
                .step(|| "create a network namespace (unshare CLONE_NEWNET)".into())?;
            let file = File::open("/proc/thread-self/ns/net")
                .step(|| "open the new network namespace".into())?;
            Ok(NetNs { fd: file.into() })
        })
        .join()
        .expect("namespace thread does not panic")
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` on a thread inside the namespace (netlink sockets opened there belong to it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, SysError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
                        .step(|| "enter the sandbox network namespace (setns)".into())?;
                    Ok(f())
                })
                .join()
                .expect("namespace thread does not panic")
        })
    }
}
