//! `sbx __init`: the processes between sbx and the command.
//!
//! sbx starts this program already inside the sandbox's network namespace, in a new mount
//! namespace, with a new PID namespace waiting for its first child, and with SIGKILL as its
//! parent-death signal. It then runs as two processes:
//!
//! ```text
//! sbx (supervisor) ── sbx __init (forwarder) ── PID 1: reaper ── the command
//! ```
//!
//! The reaper is PID 1 of the sandbox's PID namespace: when it exits, the kernel kills every
//! process left in the namespace, daemons and `setsid` escapees included. Each link dies with its
//! parent (parent-death signals), so the command never outlives sbx. Signals that someone sent
//! (kill, not the terminal: the terminal signals the command's process group itself) are passed
//! down; the exit status is passed up, a death by signal N as 128+N.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe, setgroups, setresgid, setresuid};

use crate::sys::caps;

/// Who the command runs as.
#[derive(Debug, Clone)]
pub enum RunAs {
    /// Root, with the capabilities of [`caps::KEEP`] only.
    Root,
    User {
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
    },
}

#[derive(Debug, Clone)]
pub struct InitArgs {
    pub resolv_conf: Option<PathBuf>,
    /// The sandbox is a cgroup (and this process in a cgroup namespace rooted there): hide the
    /// host's cgroup tree, which the command could otherwise write itself out through.
    pub cgroup_confined: bool,
    pub run_as: RunAs,
    pub cwd: PathBuf,
    pub command: Vec<OsString>,
}

/// The signals sbx passes on to the command.
pub const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// The next signal of `set` (blocked), with whether a process sent it (kill, sigqueue, tgkill)
/// rather than the kernel (a terminal's ^C, a child's exit).
fn wait_signal(set: &SigSet) -> (Signal, bool) {
    loop {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: sigwaitinfo writes a full siginfo_t into `info` when it returns a signal.
        let signo = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
        if signo < 0 {
            continue; // EINTR
        }
        // SAFETY: set by the successful call above.
        let code = unsafe { info.assume_init() }.si_code;
        let sent = matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL);
        if let Ok(signal) = Signal::try_from(signo) {
            return (signal, sent);
        }
    }
}

/// The shell convention: the exit code, or 128+N for a death by signal N.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

fn fail(step: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("sbx: {step}: {e}");
    std::process::exit(125);
}

/// Runs the init processes; never returns.
pub fn run(args: InitArgs) -> ! {
    let set = waited_signals();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        fail("block signals", e);
    }
    // The reaper watches this pipe: when the forwarder is gone, the write end closes.
    let (watch, keep) = pipe().unwrap_or_else(|e| fail("create a pipe", e));
    // SAFETY: this process is single-threaded (freshly exec'd), so fork is sound.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(keep);
            reaper(args, &set, watch)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(watch);
            forward_until_exit(child, &set, keep)
        }
        Err(e) => fail("start the sandbox's first process (fork)", e),
    }
}

fn forward_until_exit(child: Pid, set: &SigSet, _keep: OwnedFd) -> ! {
    loop {
        match wait_signal(set) {
            (Signal::SIGCHLD, _) => {
                if let Ok(status) = waitpid(child, Some(WaitPidFlag::WNOHANG))
                    && let Some(code) = exit_code(status)
                {
                    std::process::exit(code);
                }
            }
            (signal, true) => {
                let _ = kill(child, signal);
            }
            (_, false) => {}
        }
    }
}

fn reaper(args: InitArgs, set: &SigSet, watch: OwnedFd) -> ! {
    // What `ps` inside the sandbox shows as PID 1 (otherwise "exe", from /proc/self/exe).
    let _ = nix::sys::prctl::set_name(c"sbx-init");
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("set the parent-death signal", e);
    }
    // The forwarder may have died before the line above took effect.
    if parent_gone(&watch) {
        std::process::exit(125);
    }
    if let Err(e) = set_up_mounts(args.resolv_conf.as_deref(), args.cgroup_confined) {
        fail("set up the sandbox's mounts", e);
    }
    // SAFETY: still single-threaded.
    let command = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(watch);
            run_command(&args)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail("start the command (fork)", e),
    };
    loop {
        match wait_signal(set) {
            (Signal::SIGCHLD, _) => loop {
                // Reap every child: orphans in the namespace are ours to reap.
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) if status.pid() == Some(command) => {
                        if let Some(code) = exit_code(status) {
                            // Leaving kills whatever is left in the namespace.
                            std::process::exit(code);
                        }
                    }
                    Ok(_) => {}
                }
            },
            (signal, true) => {
                let _ = kill(command, signal);
            }
            (_, false) => {}
        }
    }
}

fn parent_gone(watch: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: watch.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLIN) != 0
}

/// A private view of the mounts: a /proc of the sandbox's PID namespace, the sandbox's own
/// resolv.conf (read-only) where the host's is, and, for a cgroup sandbox, every cgroup2 mount
/// read-only.
fn set_up_mounts(resolv_conf: Option<&Path>, cgroup_confined: bool) -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    if let Some(source) = resolv_conf {
        // Follow a symlinked /etc/resolv.conf (systemd-resolved) to the file programs read.
        let target = std::fs::canonicalize("/etc/resolv.conf")
            .map_err(|e| format!("find /etc/resolv.conf: {e}"))?;
        mount(
            Some(source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} on {}: {e}", source.display(), target.display()))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("make {} read-only: {e}", target.display()))?;
    }
    if cgroup_confined {
        // Without this, a command running as uid 0 owns the root cgroup's cgroup.procs and can
        // move itself out of the sandbox's cgroup (a cgroup namespace only bounds that when the
        // host mounted cgroup2 with nsdelegate, which sbx does not change).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
        for line in mountinfo.lines() {
            let Some((mount, fs)) = line.split_once(" - ") else {
                continue;
            };
            if fs.split(' ').next() != Some("cgroup2") {
                continue;
            }
            let Some(point) = mount.split(' ').nth(4) else {
                continue;
            };
            mount_cgroup2_read_only(point)?;
        }
    }
    Ok(())
}

/// Makes this namespace's copy of a cgroup2 mount read-only: no cgroup.procs write, no mkdir.
/// The host's mount is another copy and stays as it is.
fn mount_cgroup2_read_only(point: &str) -> Result<(), String> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, point, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("make {point} read-only: {e}"))
}

fn run_command(args: &InitArgs) -> ! {
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        fail("unblock signals", e);
    }
    if let Err(e) = drop_privileges(&args.run_as) {
        fail("drop privileges", e);
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        fail("set no_new_privs", e);
    }
    let program = &args.command[0];
    let e = std::process::Command::new(program)
        .args(&args.command[1..])
        .current_dir(&args.cwd)
        .exec();
    eprintln!("sbx: cannot run `{}`: {e}", program.to_string_lossy());
    std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}

fn drop_privileges(run_as: &RunAs) -> Result<(), String> {
    match run_as {
        RunAs::Root => caps::drop_all_but_keep().map_err(|e| e.to_string()),
        RunAs::User { uid, gid, groups } => {
            let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
            setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
            let gid = Gid::from_raw(*gid);
            setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
            caps::drop_bounding_set().map_err(|e| e.to_string())?;
            let uid = Uid::from_raw(*uid);
            // Leaving uid 0 clears every remaining capability.
            setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))
        }
    }
}
