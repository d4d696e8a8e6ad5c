//! The Sandbox stage: run one command under a Plan, supervise it, and leave the host as it was.
//!
//! ```text
//! lock /run/sbx ─ clean dead slots ─ claim a slot ─ backend setup ─ unlock
//! DNS service (allowlist) ─ spawn `sbx __init` into the sandbox ─ forward signals ─ wait
//! lock ─ backend teardown ─ release the slot ─ restore sysctls if no sandbox is left ─ unlock
//! ```
//!
//! A supervisor killed by SIGKILL cannot clean up: its command dies with it (parent-death signals
//! and the sandbox's PID namespace), and what it left on the host is removed by the next sbx or
//! by `sbx gc`, which can tell dead slots from live ones by their locks.

pub mod dns;
pub mod init;
mod resolv_conf;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, User, getgrouplist, getpid, getppid};

use crate::backend::{Backend, Enforced, Event, Kept, Observe, Placement};
use crate::plan::Plan;
use crate::policy::name::HostName;
use crate::resolve::Resolver;
use crate::state::{Locked, State};
use crate::sys::file::{self, Rights};
use crate::sys::{SysError, caps};
use init::RunAs;

pub struct Options {
    pub backend: crate::backend::Choice,
    pub user: Option<String>,
    pub dry_run: bool,
    /// Where to write every event as a JSON line.
    pub events: Option<PathBuf>,
    /// What the sandbox records (allowed connections) and enforces (audit) beyond the plan.
    pub observe: Observe,
    /// Record the DNS questions the command asks and their answers ([`Run::asked`]).
    pub record_dns: bool,
    /// A file the caller writes when the command has ended (`sbx learn`'s policy): opened as
    /// `events` is, before the command starts ([`Run::output`]).
    pub output: Option<PathBuf>,
    /// Give the command sbx's stderr as its stdout: when sbx's own stdout is its result (`sbx
    /// learn` without `-o`), nothing the command prints can become part of it.
    pub stdout_to_stderr: bool,
    pub command: Vec<OsString>,
}

/// What one run gave, beside what `apply` reports itself.
pub struct Run {
    /// The command's exit status (128+N for a death by signal N).
    pub status: i32,
    /// The events of the run, the DNS service's and the backend's: the first
    /// [`EVENTS_KEPT`](crate::backend::EVENTS_KEPT), and how many more there were.
    pub events: Kept<Event>,
    /// With [`Options::record_dns`], what the DNS service was asked and answered.
    pub asked: Option<dns::Asked>,
    /// [`Options::output`], opened.
    pub output: Option<file::UserFile>,
}

/// Why sbx could not run the command; nothing is left on the host.
#[derive(Debug)]
pub enum ApplyError {
    /// Something the user can fix: the message says how.
    Refused(String),
    /// The command cannot be run: not found (exit status 127) or not executable (126), as a
    /// shell reports it.
    CannotRun {
        why: String,
        status: u8,
    },
    System(SysError),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Refused(why) | ApplyError::CannotRun { why, .. } => f.write_str(why),
            ApplyError::System(e) => write!(f, "{e}"),
        }
    }
}

impl From<SysError> for ApplyError {
    fn from(e: SysError) -> Self {
        ApplyError::System(e)
    }
}

/// Runs `options.command` under `plan` and returns its exit status (128+N for a death by
/// signal N). With `dry_run`, prints what would be applied instead.
pub fn apply(plan: &Plan, resolver: Arc<Resolver>, options: &Options) -> Result<i32, ApplyError> {
    run(plan, resolver, options).map(|run| run.status)
}

/// [`apply`], returning what the run observed too.
pub fn run(plan: &Plan, resolver: Arc<Resolver>, options: &Options) -> Result<Run, ApplyError> {
    let backend = crate::backend::choose(options.backend);
    let refusals = backend.refusals(plan);
    if !refusals.is_empty() {
        return Err(ApplyError::Refused(format!(
            "the {} backend cannot enforce this policy, so sbx will not run it:\n  - {}",
            backend.name(),
            refusals.join("\n  - ")
        )));
    }
    if options.dry_run {
        print!("backend: {}\n{}", backend.name(), backend.describe(plan));
        if options.observe.audit {
            println!(
                "audit: what the policy refuses is let through and reported instead (sbx's own \
                 hardening stays)"
            );
        }
        if !options.command.is_empty() {
            println!("command: {}", shell_words(&options.command));
        }
        return Ok(Run {
            status: 0,
            events: Kept::default(),
            asked: None,
            output: None,
        });
    }
    let Some(program) = options.command.first() else {
        return Err(ApplyError::Refused(
            "no command given: `sbx apply POLICY -- CMD [ARGS…]`".into(),
        ));
    };
    check_privileges()?;
    find_program(program)?;
    let run_as = run_as(options.user.as_deref())?;
    let cwd = std::env::current_dir()
        .map_err(|e| ApplyError::Refused(format!("cannot read the working directory: {e}")))?;
    // Opened now, before the command exists, with the invoking user's rights: see sys::file.
    let mut events = match &options.events {
        Some(path) => Some(
            file::create_for(path, invoking_user()?.as_ref())
                .map_err(|e| ApplyError::Refused(format!("--events: {e}")))?,
        ),
        None => None,
    };
    let output = match &options.output {
        Some(path) => Some(
            file::create_for(path, invoking_user()?.as_ref())
                .map_err(|e| ApplyError::Refused(e.to_string()))?,
        ),
        None => None,
    };

    // From here on the forwarded signals are handled by a thread of ours (see `forward_signals`);
    // blocked before any thread starts, so every thread inherits the mask.
    let forwarded = forwarded_signals();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), None)
        .map_err(|e| SysError::new("block signals", e))?;

    let state = State::open()?;
    let (slot, enforced) = {
        let locked = state.lock()?;
        clean_dead_slots(&locked)?;
        let mut stale = Vec::new();
        let slot = locked.claim(&mut stale)?;
        for index in stale {
            clean_slot(index, locked.dir())?;
        }
        match backend.setup(plan, &options.observe, slot.index, &locked) {
            Ok(enforced) => (slot, enforced),
            Err(e) => {
                let _ = slot.release(&locked);
                let _ = locked.restore_forwarding_if_unused();
                return Err(e.into());
            }
        }
    };
    let mut enforced = enforced;
    let result = run_in(
        &state,
        slot.index,
        enforced.as_mut(),
        plan,
        options,
        resolver,
        &run_as,
        &cwd,
    );
    let (result, mut observed, asked) = match result {
        Ok((code, refused_names, asked)) => (Ok(code), refused_names, asked),
        Err(e) => (Err(e), Kept::default(), None),
    };
    observed.append(enforced.events());
    // The DNS service's and the backend's, each in order, interleaved as they happened.
    observed.items.sort_by_key(|e| e.time);
    let reported = report_events(&observed, events.as_mut());
    let locked = state.lock()?;
    let teardown = enforced.teardown(&locked);
    let _ = std::fs::remove_file(resolv_conf_path(state.dir(), slot.index));
    // A slot whose teardown failed stays claimed by its file: the next sbx, or `sbx gc`, finds
    // it dead and cleans it again, instead of handing its leftovers to a new sandbox.
    if teardown.is_ok() {
        slot.release(&locked)?;
    }
    locked.restore_forwarding_if_unused()?;
    teardown?;
    reported?;
    Ok(Run {
        status: result?,
        events: observed,
        asked,
        output,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    state: &State,
    slot: u32,
    enforced: &mut dyn Enforced,
    plan: &Plan,
    options: &Options,
    resolver: Arc<Resolver>,
    run_as: &RunAs,
    cwd: &Path,
) -> Result<(i32, Kept<Event>, Option<dns::Asked>), ApplyError> {
    let Options {
        observe,
        command,
        record_dns,
        stdout_to_stderr,
        ..
    } = options;
    let mut resolv_conf = None;
    let dns = match enforced.dns_listen_address() {
        Some(at) => {
            let names = || -> Result<dns::Names, SysError> {
                let mut names = dns::Names::new(plan, enforced.admitter()).auditing(observe.audit);
                if *record_dns {
                    names = names.recording();
                }
                // What sbx resolved at start is admitted like any answer: for its TTL plus the
                // grace period, before the command runs.
                for (name, addrs, ttl) in plan.name_answers() {
                    let ttl = std::time::Duration::from_secs(ttl.into());
                    let name = HostName::parse(&name)
                        .map_err(|e| SysError::new(format!("admit `{name}`"), e))?;
                    names.admit(&name, &addrs, ttl.saturating_add(plan.dns_grace))?;
                }
                Ok(names)
            };
            let started = match dns::DnsService::start(at, names()?, &resolver) {
                // Something of the host's holds port 53 there: any port, and the backend
                // redirects (eBPF rewrites every port-53 destination to the service).
                Err(e) if at.ip().is_loopback() && at.port() == 53 => {
                    let fallback = SocketAddr::new(at.ip(), 0);
                    dns::DnsService::start(fallback, names()?, &resolver).map_err(|_| e)
                }
                other => other,
            };
            let (service, bound) = started?;
            enforced.dns_bound(bound)?;
            // A resolv.conf can only name a server on port 53; elsewhere the backend redirects.
            if bound.port() == 53 {
                let path = resolv_conf_path(state.dir(), slot);
                // What clients outside read; without one, the service alone.
                let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let text = resolv_conf::for_sandbox(&host, bound.ip(), slot);
                std::fs::write(&path, text)
                    .map_err(|e| SysError::new(format!("write {}", path.display()), e))?;
                resolv_conf = Some(path);
            }
            Some(service)
        }
        None => None,
    };
    let mut args: Vec<OsString> = vec!["sbx".into(), "__init".into()];
    if let Some(path) = &resolv_conf {
        args.extend(["--resolv-conf".into(), path.into()]);
    }
    if let RunAs::User { uid, gid, groups } = run_as {
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        args.extend(["--uid".into(), uid.to_string().into()]);
        args.extend(["--gid".into(), gid.to_string().into()]);
        args.extend(["--groups".into(), groups.join(",").into()]);
    }
    let Placement { netns, cgroup } = enforced.placement();
    if netns.is_none() {
        args.push("--host-network".into());
    }
    args.extend(["--cwd".into(), cwd.into(), "--".into()]);
    args.extend(command.iter().cloned());
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let supervisor = getpid();
    let mut pre_exec = || -> Result<(), Errno> {
        if *stdout_to_stderr {
            nix::unistd::dup2_stdout(std::io::stderr())?;
        }
        if let Some(fd) = netns {
            setns(fd, CloneFlags::CLONE_NEWNET)?;
        }
        // Its own hostname and System V IPC, so that it can change neither for the host.
        let mut namespaces = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        if cgroup.is_some() {
            // Born in the sandbox's cgroup (see `spawn`), so every socket the command creates
            // belongs to it; then a cgroup namespace rooted there, which it cannot leave.
            namespaces |= CloneFlags::CLONE_NEWCGROUP;
        }
        unshare(namespaces)?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        if getppid() != supervisor {
            // sbx exited during start-up.
            return Err(Errno::ESRCH);
        }
        Ok(())
    };
    // SAFETY: `pre_exec` makes system calls only (setns, unshare, prctl, getppid) on values
    // computed before the clone: nothing allocates or locks in the child.
    let child_pid = unsafe {
        crate::sys::spawn::spawn("/proc/self/exe".as_ref(), &args, cgroup, &mut pre_exec)
    }
    .map_err(|e| SysError::new("start the sandbox (sbx __init)", e))?;
    std::thread::Builder::new()
        .name("sbx-signals".into())
        .spawn(move || forward_signals(child_pid))
        .map_err(|e| SysError::new("start the signal thread", e))?;
    let status = loop {
        match waitpid(child_pid, None) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(|e| SysError::new("wait for the sandbox", e))?,
        }
    };
    let code = match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 125,
    };
    let (refused, asked) = dns.map(dns::DnsService::finish).unwrap_or_default();
    Ok((code, refused, asked))
}

/// A one-line summary of the denials on stderr, and every event as a JSON line in `events` if
/// given. Events go only to the file opened before the command ran; if its path names something
/// else now (the command replaced it, with a link say), nothing is written and that is an error.
fn report_events(
    observed: &Kept<Event>,
    events: Option<&mut file::UserFile>,
) -> Result<(), SysError> {
    if observed.lost > 0 {
        eprintln!(
            "sbx: at least {} event{} lost: the kernel's buffer for them was full (a flood of \
             connections, here or in another sandbox); the summary and --events lack {}",
            observed.lost,
            if observed.lost == 1 { " was" } else { "s were" },
            if observed.lost == 1 { "it" } else { "them" },
        );
    }
    if observed.not_kept > 0 {
        eprintln!(
            "sbx: the command made more than {} events; {} more were counted but not kept \
             (in the summary or --events)",
            crate::backend::EVENTS_KEPT,
            observed.not_kept
        );
    }
    let observed = &observed.items;
    let has_events = events.is_some();
    let written = events.map_or(Ok(()), |out| {
        let mut text = String::new();
        for event in observed {
            text.push_str(&serde_json::to_string(event).expect("serialisable"));
            text.push('\n');
        }
        out.write_whole(text.as_bytes())
    });
    let (audited, denials): (Vec<&Event>, Vec<&Event>) = observed
        .iter()
        .filter(|e| e.denied())
        .partition(|e| e.audit);
    if !denials.is_empty() {
        eprintln!("{}", summary(&denials, has_events));
    }
    if !audited.is_empty() {
        eprintln!("{}", summary(&audited, has_events));
    }
    written
}

/// The one line that sums up a run's denials on stderr (all real, or all would-be denials of an
/// audit, which says so).
fn summary(denials: &[&Event], has_events: bool) -> String {
    let mut by_destination: std::collections::BTreeMap<(String, &str), (usize, Vec<&str>)> =
        std::collections::BTreeMap::new();
    for d in denials {
        let protocol = match (d.hook, d.protocol) {
            ("dns", _) => "dns",
            (_, Some(6)) => "tcp",
            (_, Some(17)) => "udp",
            (_, Some(1 | 58)) => "icmp",
            _ => "ip",
        };
        let what = match (d.hook, &d.name, d.destination, d.port) {
            ("dns", Some(name), _, _) => name.clone(),
            ("sock_create", ..) => format!("a {protocol} socket"),
            (_, _, Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
            // Protocols without ports (ICMP, …): the address alone.
            (_, _, Some(ip), None) => ip.to_string(),
            _ => "?".to_string(),
        };
        let entry = by_destination.entry((what, protocol)).or_default();
        entry.0 += 1;
        if let Some(command) = &d.command
            && !entry.1.contains(&command.as_str())
        {
            entry.1.push(command);
        }
    }
    let mut parts: Vec<String> = by_destination
        .iter()
        .take(5)
        .map(|((what, protocol), (count, commands))| {
            let times = if *count > 1 {
                format!(" {count}\u{d7}")
            } else {
                String::new()
            };
            let by = if commands.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    commands
                        .iter()
                        .map(|c| printable(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("{what}/{protocol}{times}{by}")
        })
        .collect();
    if by_destination.len() > 5 {
        parts.push(format!("and {} more", by_destination.len() - 5));
    }
    let hint = if !has_events {
        " (every one: --events FILE)"
    } else {
        ""
    };
    let (what, audit) = match denials.first().is_some_and(|d| d.audit) {
        true => (
            "audit: would have denied",
            " (an audit: nothing was refused)",
        ),
        false => ("denied", ""),
    };
    format!(
        "sbx: {what} {} time{}: {}{audit}{hint}",
        denials.len(),
        if denials.len() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// A process name as the summary shows it: the command sets its own (`prctl(PR_SET_NAME)`), and
/// a terminal control in it could rewrite the line sbx prints after the command has gone.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in init::FORWARDED {
        set.add(signal);
    }
    set
}

/// Passes signals that were sent to sbx (kill, not a terminal's ^C, which reaches the command's
/// process group directly) on to the sandbox.
fn forward_signals(child: Pid) {
    let set = forwarded_signals();
    loop {
        if let (signal, true) = crate::sys::signal::wait(&set) {
            let _ = kill(child, signal);
        }
    }
}

fn resolv_conf_path(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("resolv-{slot}.conf"))
}

/// Removes what the dead sandbox in `slot` left, whichever backend it used.
fn clean_slot(slot: u32, dir: &Path) -> Result<(), SysError> {
    crate::backend::nftables::Nftables.clean_dead_slot(slot)?;
    crate::backend::ebpf::Ebpf.clean_dead_slot(slot)?;
    let _ = std::fs::remove_file(resolv_conf_path(dir, slot));
    Ok(())
}

/// Cleans and releases every dead slot; returns their numbers.
fn clean_dead_slots(locked: &Locked<'_>) -> Result<Vec<u32>, SysError> {
    let mut cleaned = Vec::new();
    for slot in locked.dead_slots()? {
        clean_slot(slot.index, locked.dir())?;
        cleaned.push(slot.index);
        slot.release(locked)?;
    }
    Ok(cleaned)
}

/// What `sbx gc` did.
pub struct GcReport {
    /// Slots of dead sandboxes whose leftovers were removed.
    pub cleaned: Vec<u32>,
    /// With `--all`: whether sbx's pinned eBPF programs and maps were removed; `None` when a
    /// live sandbox still uses them.
    pub pinned_removed: Option<bool>,
}

/// `sbx gc`: removes what dead sandboxes left behind; live ones are untouched. With `all`, and
/// when no sandbox is live, also the state kept between runs (pinned eBPF programs and maps).
pub fn gc(all: bool) -> Result<GcReport, ApplyError> {
    check_privileges()?;
    let state = State::open()?;
    let locked = state.lock()?;
    let cleaned = clean_dead_slots(&locked)?;
    locked.restore_forwarding_if_unused()?;
    let pinned_removed = match all && locked.live_slots()? == 0 {
        true => {
            let removed = crate::backend::ebpf::remove_pinned_state()?;
            // Nothing of sbx is left: its state directory goes too (its lock last).
            let _ = std::fs::remove_dir_all(locked.dir().join("events"));
            let _ = std::fs::remove_dir(locked.dir().join("slots"));
            let _ = std::fs::remove_file(locked.dir().join("events.lock"));
            let _ = std::fs::remove_file(locked.dir().join("lock"));
            let _ = std::fs::remove_dir(locked.dir());
            Some(removed)
        }
        false => None,
    };
    Ok(GcReport {
        cleaned,
        pinned_removed,
    })
}

fn check_privileges() -> Result<(), ApplyError> {
    let missing = caps::missing_for_sbx();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|c| c.to_string()).collect();
    Err(ApplyError::Refused(format!(
        "sbx needs root to build sandboxes (cgroups and eBPF programs, or network namespaces \
         and nftables rules; missing {}): run it \
         as root or with sudo; the command itself runs as the invoking user under sudo, or as \
         --user",
        names.join(", ")
    )))
}

fn find_program(program: &OsString) -> Result<(), ApplyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = Path::new(program);
    let has_path = name.components().count() > 1;
    let candidates: Vec<PathBuf> = if has_path {
        vec![name.to_path_buf()]
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .collect()
            })
            .unwrap_or_default()
    };
    let files: Vec<std::fs::Metadata> = candidates
        .iter()
        .filter_map(|c| std::fs::metadata(c).ok())
        .filter(std::fs::Metadata::is_file)
        .collect();
    if files.iter().any(|m| m.permissions().mode() & 0o111 != 0) {
        return Ok(());
    }
    let (why, status) = if files.is_empty() {
        let place = if has_path { "" } else { " in PATH" };
        (
            format!("`{}`: command not found{place}", name.display()),
            127,
        )
    } else {
        (
            format!(
                "`{}`: not executable (no execute permission); `chmod +x` it, or run it \
                 through its interpreter",
                name.display()
            ),
            126,
        )
    };
    Err(ApplyError::CannotRun { why, status })
}

/// Who the command runs as: `--user`, else the user who ran sudo, else root without the
/// capabilities that could undo the sandbox.
fn run_as(user: Option<&str>) -> Result<RunAs, ApplyError> {
    let user = match user {
        Some(spec) => Some(lookup_user(spec)?),
        None => match std::env::var("SUDO_UID")
            .ok()
            .and_then(|u| u.parse::<u32>().ok())
        {
            Some(uid) if uid != 0 => Some(
                User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .ok_or_else(|| ApplyError::Refused(format!("SUDO_UID {uid} names no user")))?,
            ),
            _ => None,
        },
    };
    let Some(user) = user.filter(|u| !u.uid.is_root()) else {
        return Ok(RunAs::Root);
    };
    let Rights { uid, gid, groups } = rights_of(&user)?;
    Ok(RunAs::User { uid, gid, groups })
}

/// The user who ran sbx, when not root: the sudo user (`SUDO_UID`), or the real user of an sbx
/// given capabilities some other way. `None` for root. Files sbx writes for the user are opened
/// with these rights (`--user` does not change them: it names who the command runs as).
fn invoking_user() -> Result<Option<Rights>, ApplyError> {
    let real = nix::unistd::getuid();
    let uid = if real.is_root() {
        // As `run_as` reads it: the command runs as this user too.
        match std::env::var("SUDO_UID")
            .ok()
            .and_then(|u| u.parse::<u32>().ok())
        {
            Some(uid) => uid,
            None => return Ok(None),
        }
    } else {
        real.as_raw()
    };
    if uid == 0 {
        return Ok(None);
    }
    let user = User::from_uid(uid.into()).ok().flatten().ok_or_else(|| {
        ApplyError::Refused(format!("the invoking user {uid} has no passwd entry"))
    })?;
    rights_of(&user).map(Some)
}

/// A user's uid, primary group and every group they are in.
fn rights_of(user: &User) -> Result<Rights, ApplyError> {
    let name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| ApplyError::Refused(format!("user name `{}` is not valid", user.name)))?;
    let groups = getgrouplist(&name, user.gid)
        .map_err(|e| SysError::new(format!("look up the groups of {}", user.name), e))?;
    Ok(Rights {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
    })
}

fn lookup_user(spec: &str) -> Result<User, ApplyError> {
    let found = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(uid.into()),
        Err(_) => User::from_name(spec),
    };
    found
        .map_err(|e| SysError::new(format!("look up user {spec}"), e))?
        .ok_or_else(|| ApplyError::Refused(format!("--user {spec}: no such user")))
}

fn shell_words(words: &[OsString]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.to_string_lossy();
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@".contains(c))
            {
                w.into_owned()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    fn denial(destination: &str, port: Option<u16>, protocol: u8) -> Event {
        Event {
            pid: None,
            command: None,
            destination: Some(destination.parse().unwrap()),
            port,
            protocol: Some(protocol),
            hook: "nftables",
            name: None,
            record_type: None,
            verdict: crate::backend::Verdict::Denied,
            audit: false,
            time: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn process_names_in_the_summary_carry_no_terminal_controls() {
        let mut d = denial("192.0.2.7", Some(443), 6);
        d.command = Some("\r\u{1b}[2K\u{9b}x".into());
        let line = summary(&[&d], true);
        assert!(line.ends_with("(\\r\\u{1b}[2K\\u{9b}x)"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line}");
    }

    #[test]
    fn the_summary_names_every_address_it_has() {
        let denials = [
            denial("ff02::2", None, 58),
            denial("ff02::2", None, 58),
            denial("192.0.2.7", Some(443), 6),
        ];
        assert_eq!(
            summary(&denials.iter().collect::<Vec<_>>(), true),
            "sbx: denied 3 times: 192.0.2.7:443/tcp, ff02::2/icmp 2\u{d7}"
        );
        let audited = Event {
            audit: true,
            ..denial("192.0.2.7", Some(443), 6)
        };
        assert_eq!(
            summary(&[&audited], false),
            "sbx: audit: would have denied 1 time: 192.0.2.7:443/tcp (an audit: nothing was \
             refused) (every one: --events FILE)"
        );
    }
}
