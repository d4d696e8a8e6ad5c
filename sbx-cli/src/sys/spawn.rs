//! Starting a process the way `Command::spawn` with `pre_exec` does, but with clone3, so that
//! it can be born inside a cgroup (`CLONE_INTO_CGROUP`).
//!
//! Why not create it and then write its pid into `cgroup.procs`: moving a process between
//! cgroups takes the kernel's cgroup threadgroup lock for writing, which waits for an RCU grace
//! period (11-14 ms on this project's machines, more than the rest of a sandbox's start-up).
//! A process created in its cgroup never moves, and there is no moment at which it runs
//! outside the cgroup.

use std::ffi::{CString, OsStr};
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask, sigaction};
use nix::unistd::Pid;

/// Not in the libc crate yet (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the child does between its creation and `execv`. It runs in a copy of this process that
/// has only the calling thread: it must not allocate or take locks, only make system calls, and
/// it reports failure as an errno.
pub type PreExec<'a> = &'a mut dyn FnMut() -> Result<(), nix::errno::Errno>;

/// Starts `program` with `args` (`args[0]` is the name the program sees), inheriting the
/// environment, the working directory and the standard streams, with the signal mask cleared
/// and SIGPIPE back to its default. With `cgroup` (an open cgroup v2 directory) the process
/// starts in that cgroup. Returns once `program` has been executed, or with the errno of the
/// step that failed.
///
/// # Safety
///
/// `pre_exec` runs in the child, a copy of this process with only the calling thread: it must
/// be async-signal-safe (no allocation, no locks another thread may have held; system calls
/// only), as std's `CommandExt::pre_exec` requires.
pub unsafe fn spawn(
    program: &OsStr,
    args: &[&OsStr],
    cgroup: Option<BorrowedFd<'_>>,
    pre_exec: PreExec<'_>,
) -> io::Result<Pid> {
    // Everything the child needs is allocated here, before the clone.
    let to_c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::other("argument contains a NUL byte"))
    };
    let program = to_c(program)?;
    let args = args
        .iter()
        .map(|a| to_c(a))
        .collect::<io::Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    // The child reports a failed step through this pipe; exec closes it (O_CLOEXEC), so EOF
    // means the program runs.
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut clone_args = libc::clone_args {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    if let Some(fd) = cgroup {
        clone_args.flags |= CLONE_INTO_CGROUP;
        clone_args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: without CLONE_VM or a stack this is fork(): the child runs on a copy of this
    // thread's stack, and only does what `in_child` does before exec or _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(report_read);
            let errno = in_child(&program, &argv, pre_exec);
            let bytes = (errno as i32).to_ne_bytes();
            // SAFETY: plain system calls on a descriptor this process owns.
            unsafe {
                libc::write(report_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            }
        }
        pid => {
            drop(report_write);
            let pid = Pid::from_raw(pid as i32);
            let mut bytes = [0u8; 4];
            if std::fs::File::from(report_read)
                .read_exact(&mut bytes)
                .is_ok()
            {
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(bytes)));
            }
            Ok(pid)
        }
    }
}

/// The child's side: a clean signal state, `pre_exec`, exec. Returns only on failure.
fn in_child(
    program: &CString,
    argv: &[*const libc::c_char],
    pre_exec: PreExec<'_>,
) -> nix::errno::Errno {
    // sbx blocks the signals it forwards and ignores SIGPIPE; the command starts as a shell
    // would start it.
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        return e;
    }
    let default = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigDfl,
        nix::sys::signal::SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: restoring the default disposition installs no handler.
    if let Err(e) = unsafe { sigaction(Signal::SIGPIPE, &default) } {
        return e;
    }
    if let Err(e) = pre_exec() {
        return e;
    }
    // SAFETY: `argv` is a NUL-terminated array of pointers to live C strings.
    unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) };
    nix::errno::Errno::last()
}
