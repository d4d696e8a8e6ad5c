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
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe, setgroups, setresgid, setresuid};

use crate::state::STATE_DIR;
use crate::sys::{Step, SysError, caps, fd, landlock, mount, seccomp, signal};

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
    /// The sandbox shares the host's network namespace (the eBPF backend): the host's abstract
    /// unix sockets are in reach unless Landlock scopes them, which is then required.
    pub host_network: bool,
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
        match signal::wait(set) {
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
    if let Err(e) = set_up_mounts(args.resolv_conf.as_deref()) {
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
        match signal::wait(set) {
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
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN))
}

/// The /proc paths a container runtime makes read-only (OCI's `readonlyPaths`): /proc/sys holds
/// the kernel's global settings (`kernel.core_pattern` runs a program as the host's root), the
/// rest triggers or tunes hardware and file systems.
const READ_ONLY_PROC: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// The paths a container runtime hides (OCI's `maskedPaths`): kernel memory, keys, timers and
/// firmware interfaces.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// File systems that are the kernel's controls rather than files: every mount of one is made
/// read-only in the sandbox, wherever it is (cgroup hierarchies, v1 and v2, bpffs, tracefs, …).
const CONTROL_FILE_SYSTEMS: &[&str] = &[
    "sysfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "securityfs",
    "debugfs",
    "tracefs",
    "configfs",
    "pstore",
    "efivarfs",
    "fusectl",
    "binfmt_misc",
    "mqueue",
    "proc",
];

/// The sandbox's view of the mounts: a /proc of its PID namespace, its own resolv.conf
/// (read-only) where the host's is, the kernel's settings and controls read-only or hidden,
/// and sbx's own state hidden. A command that runs as root owns /proc/sys and the cgroup files
/// by their permissions, capabilities or not: read-only mounts are what stops it.
fn set_up_mounts(resolv_conf: Option<&Path>) -> Result<(), SysError> {
    mount::make_all_private()?;
    mount::fresh_proc()?;
    mount::private_dev()?;
    if let Some(source) = resolv_conf {
        // Follow a symlinked /etc/resolv.conf (systemd-resolved) to the file programs read.
        let target =
            std::fs::canonicalize("/etc/resolv.conf").step(|| "find /etc/resolv.conf".into())?;
        mount::bind_file_read_only(source, &target)?;
    }
    // sbx's state: slot locks, the forwarding record, the pinned eBPF maps. The bpffs goes
    // first (hidden under a tmpfs it would still be in the namespace), then the directory.
    let state = Path::new(STATE_DIR);
    let bpf = crate::backend::ebpf::bpf_dir();
    if crate::backend::ebpf::is_bpffs(&bpf) {
        mount::detach(&bpf)?;
    }
    if state.is_dir() {
        mount::empty_read_only_tmpfs(state)?;
    }
    for path in READ_ONLY_PROC {
        let path = Path::new(path);
        if path.exists() {
            mount::bind_read_only(path)?;
        }
    }
    for path in MASKED {
        mount::mask(Path::new(path))?;
    }
    for m in mount::mounts()? {
        // The /proc just mounted is the sandbox's own (its read-only parts are above); any other
        // proc mount shows the host's processes and settings.
        let own_proc = m.fs_type == "proc" && m.path == "/proc";
        if CONTROL_FILE_SYSTEMS.contains(&m.fs_type.as_str()) && !own_proc {
            mount::read_only_recursive(Path::new(&m.path))?;
        }
    }
    Ok(())
}

fn run_command(args: &InitArgs) -> ! {
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        fail("unblock signals", e);
    }
    if let Err(e) = drop_privileges(&args.run_as) {
        fail("drop privileges", e);
    }
    if let Err(e) = fd::close_inherited_sockets() {
        fail("close inherited sockets", e);
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        fail("set no_new_privs", e);
    }
    if let Err(e) = landlock::scope_abstract_unix_sockets(args.host_network) {
        fail("confine the command", e);
    }
    // Last: from here on the command's process cannot unshare, mount or call bpf(2).
    if let Err(e) = seccomp::confine_command() {
        fail("confine the command", e);
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
