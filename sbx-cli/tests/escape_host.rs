//! A sandboxed command, as root or as an ordinary user, cannot act on the host outside its
//! sandbox: the kernel's global settings, the cgroup hierarchies, namespaces, bpf(2), sbx's own
//! state, the host's abstract unix sockets. Each attempt is one an escape review found working;
//! each probe of a global setting writes the value already there, so that it is harmless even
//! if it succeeds. Needs root, as CI has.

mod common;

use common::require_root;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Dir;
use common::testnet::{exclusive, host_state};

/// Runs `script` with `sh -c` in a sandbox of `mode: none`, as root or as `user`.
fn run(backend: &str, user: Option<&str>, dir: &Dir, script: &str) -> Output {
    let policy = dir.write("none.yaml", "version: 1\nnetwork: {mode: none}\n");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sbx"));
    command.args(["apply", "--backend", backend]);
    if let Some(user) = user {
        command.args(["--user", user]);
    }
    command
        .arg(&policy)
        .args(["--", "sh", "-c", script])
        .current_dir("/")
        .output()
        .expect("run sbx")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const GLOBAL_SETTINGS: &[&str] = &[
    "kernel/core_pattern",
    "kernel/hostname",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/ping_group_range",
    "net/ipv4/ip_forward",
];

fn read_settings() -> Vec<String> {
    GLOBAL_SETTINGS
        .iter()
        .map(|s| std::fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap())
        .collect()
}

/// The cgroup hierarchies mounted on the host, v1 and v2.
fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fs = fs.split(' ').next()?;
            let point = PathBuf::from(mount.split(' ').nth(4)?);
            (fs == "cgroup" || fs == "cgroup2").then_some(point)
        })
        .collect()
}

fn kernel_settings_and_cgroups_stay_out_of_reach(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let cgroups = cgroup_mounts();
    assert!(!cgroups.is_empty(), "this machine has cgroup hierarchies");
    let mut script = String::new();
    for setting in GLOBAL_SETTINGS {
        script.push_str(&format!(
            "v=$(cat /proc/sys/{setting}); (printf '%s\\n' \"$v\" > /proc/sys/{setting}) 2>/dev/null; echo {setting}=$?\n"
        ));
    }
    for (i, cgroup) in cgroups.iter().enumerate() {
        let cgroup = cgroup.display();
        script.push_str(&format!(
            "mkdir {cgroup}/sbxt-escape 2>/dev/null; echo mkdir{i}=$?\n\
             echo $$ > {cgroup}/cgroup.procs 2>/dev/null; echo procs{i}=$?\n"
        ));
    }
    script.push_str(
        "unshare -U -r true 2>/dev/null; echo userns=$?\n\
         unshare -U -r -m -C true 2>/dev/null; echo userns_mount_cgroup=$?\n\
         unshare -n true 2>/dev/null; echo netns=$?\n\
         python3 -c 'import ctypes,os,sys; libc=ctypes.CDLL(None,use_errno=True); \
            r=libc.syscall(321,7,None,0); e=ctypes.get_errno(); sys.exit(0 if r>=0 or e!=1 else 1)'; echo bpf=$?\n\
         python3 -c 'import ctypes,sys; libc=ctypes.CDLL(None,use_errno=True); \
            sys.exit(0 if libc.syscall(0x40000000|272,0x10000000)==0 else 1)'; echo x32_unshare=$?\n\
         readlink /proc/self/ns/uts /proc/self/ns/ipc\n",
    );
    let host_uts = std::fs::read_link("/proc/self/ns/uts").unwrap();
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    for user in [None, Some("nobody")] {
        let before = host_state();
        let settings = read_settings();
        let out = run(backend, user, &dir, &script);
        let text = text(&out);
        for cgroup in &cgroups {
            let made = cgroup.join("sbxt-escape");
            if made.exists() {
                let _ = std::fs::remove_dir(&made);
                panic!("{user:?}: made {} from inside:\n{text}", made.display());
            }
        }
        assert!(out.status.success(), "{user:?}: {text}");
        for line in text.lines().filter(|l| l.contains('=')) {
            assert!(
                !line.ends_with("=0"),
                "{user:?}: `{line}` succeeded inside the sandbox:\n{text}"
            );
        }
        assert_eq!(
            text.lines().filter(|l| l.contains('=')).count(),
            GLOBAL_SETTINGS.len() + 2 * cgroups.len() + 5,
            "every probe ran: {text}"
        );
        assert!(
            !text.contains(&*host_uts.to_string_lossy()),
            "{user:?}: the host's UTS namespace: {text}"
        );
        assert!(
            !text.contains(&*host_ipc.to_string_lossy()),
            "{user:?}: the host's IPC namespace: {text}"
        );
        assert_eq!(read_settings(), settings);
        assert_eq!(host_state(), before);
    }
}

fn sbx_state_is_invisible_to_the_command(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let script = "ls -A /run/sbx | wc -l; \
                  (echo net.ipv4.ip_forward=1 > /run/sbx/forwarding) 2>/dev/null; echo write=$?; \
                  grep -c ' /run/sbx/bpf ' /proc/self/mountinfo";
    for user in [None, Some("nobody")] {
        let out = run(backend, user, &dir, script);
        let text = text(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"0"),
            "{user:?}: /run/sbx shows entries inside: {text}"
        );
        assert!(
            lines
                .get(1)
                .is_some_and(|l| l.starts_with("write=") && *l != "write=0"),
            "{user:?}: {text}"
        );
        assert_eq!(
            lines.get(2),
            Some(&"0"),
            "{user:?}: sbx's bpffs is mounted inside: {text}"
        );
    }
}

/// A host daemon on an abstract unix socket (X11, a D-Bus bus and tmux use them): the command
/// must not reach it; its own abstract sockets keep working.
fn the_hosts_abstract_unix_sockets_are_out_of_reach(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let name = format!("sbxt-abstract-{}", std::process::id());
    let listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let script = format!(
        "python3 -c '\n\
import socket\n\
s = socket.socket(socket.AF_UNIX)\n\
try:\n    s.connect(\"\\0{name}\"); print(\"host=reached\")\n\
except OSError as e: print(\"host=refused\", e.errno)\n\
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
try:\n    u.sendto(b\"x\", \"\\0{name}\"); print(\"host_dgram=reached\")\n\
except OSError as e: print(\"host_dgram=refused\", e.errno)\n\
own = socket.socket(socket.AF_UNIX); own.bind(\"\\0{name}-own\"); own.listen()\n\
c = socket.socket(socket.AF_UNIX); c.connect(\"\\0{name}-own\"); print(\"own=reached\")\n'"
    );
    for user in [None, Some("nobody")] {
        listener.set_nonblocking(true).unwrap();
        let out = run(backend, user, &dir, &script);
        let text = text(&out);
        assert!(text.contains("host=refused"), "{user:?}: {text}");
        assert!(text.contains("host_dgram=refused"), "{user:?}: {text}");
        assert!(text.contains("own=reached"), "{user:?}: {text}");
        assert!(
            listener.accept().is_err(),
            "{user:?}: the host's listener saw a connection"
        );
    }
}

/// Typing into the terminal sbx was started from (TIOCSTI) would run what is typed in the
/// invoking shell, outside the sandbox, once sbx exits. The probe types into a terminal of its
/// own, made its controlling terminal, so that nothing reaches a real one even if it works.
fn the_terminal_cannot_be_typed_into(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let code = r#"
import os, pty, fcntl, termios
master, slave = pty.openpty()
name = os.ttyname(slave)
if os.fork() == 0:
    os.setsid()
    fd = os.open(name, os.O_RDWR)
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"x")
        print("tiocsti=typed")
    except OSError as e:
        print("tiocsti=refused", e.errno)
    os._exit(0)
os.wait()
"#;
    let script = &format!("python3 -c '{code}'");
    for user in [None, Some("nobody")] {
        let out = run(backend, user, &dir, script);
        let text = text(&out);
        assert!(text.contains("tiocsti=refused 1"), "{user:?}: {text}");
    }
}

/// Socket families and protocols neither backend judges: UDP-Lite and SCTP would pass the eBPF
/// hooks by; AF_VSOCK reaches the hypervisor through no network namespace.
fn sockets_no_backend_judges_are_refused(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let code = r#"
import socket
probes = [("udplite", 2, 2, 136), ("udplite6", 10, 2, 136), ("sctp", 2, 1, 132),
          ("vsock", 40, 1, 0), ("tcp", 2, 1, 0), ("udp6", 10, 2, 0)]
for name, family, kind, proto in probes:
    try:
        socket.socket(family, kind, proto)
        print(name + "=made")
    except OSError:
        print(name + "=refused")
"#;
    let script = &format!("python3 -c '{code}'");
    for user in [None, Some("nobody")] {
        let out = run(backend, user, &dir, script);
        let text = text(&out);
        for refused in ["udplite", "udplite6", "sctp", "vsock"] {
            assert!(
                text.contains(&format!("{refused}=refused")),
                "{user:?}: {text}"
            );
        }
        assert!(
            text.contains("tcp=made") && text.contains("udp6=made"),
            "{user:?}: {text}"
        );
    }
}

/// A socket made outside the sandbox is the host's: whoever started sbx must not hand one to
/// the command by accident. Pipes (a make jobserver) still pass.
fn inherited_sockets_are_closed(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    // Without close-on-exec, so that sbx inherits them as a careless caller would pass them.
    // SAFETY: plain system calls creating descriptors this test closes below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    let mut pipe = [0; 2];
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    assert!(socket > 2);
    let script = format!(
        "[ -e /proc/self/fd/{socket} ] && echo socket=kept || echo socket=closed; \
         [ -e /proc/self/fd/{pipe} ] && echo pipe=kept || echo pipe=closed",
        pipe = pipe[0]
    );
    for user in [None, Some("nobody")] {
        let out = run(backend, user, &dir, &script);
        let text = text(&out);
        assert!(text.contains("socket=closed"), "{user:?}: {text}");
        assert!(text.contains("pipe=kept"), "{user:?}: {text}");
    }
    // SAFETY: descriptors this test made.
    unsafe {
        libc::close(socket);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
}

/// The host's device nodes (loop devices, disks, consoles, kvm) are not in the sandbox's /dev;
/// what programs expect is, and new terminals can be opened.
fn dev_holds_only_what_programs_expect(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let script = "ls /dev | tr '\\n' ' '; echo; echo x > /dev/null && echo null=ok; \
                  python3 -c 'import os, pty; m, s = pty.openpty(); print(\"pty=\" + os.ttyname(s))'";
    for user in [None, Some("nobody")] {
        let out = run(backend, user, &dir, script);
        let text = text(&out);
        let listing = text.lines().next().unwrap_or_default();
        assert_eq!(
            listing.trim(),
            "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
            "{user:?}: {text}"
        );
        assert!(text.contains("null=ok"), "{user:?}: {text}");
        assert!(text.contains("pty=/dev/pts/"), "{user:?}: {text}");
    }
}

crate::on_both_backends!(
    the_terminal_cannot_be_typed_into,
    sockets_no_backend_judges_are_refused,
    inherited_sockets_are_closed,
    dev_holds_only_what_programs_expect,
    kernel_settings_and_cgroups_stay_out_of_reach,
    sbx_state_is_invisible_to_the_command,
    the_hosts_abstract_unix_sockets_are_out_of_reach,
);

/// A cgroup left inside a sandbox's cgroup (with a process in it) must not make its slot
/// unusable: teardown kills and removes the whole tree. The command itself can no longer make
/// one, so the test plays that part from the host.
#[test]
fn a_cgroup_left_inside_a_sandbox_does_not_block_its_slot() {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let policy = dir.write("none.yaml", "version: 1\nnetwork: {mode: none}\n");
    let ready = dir.path().join("ready");
    let go = dir.path().join("go");
    let script = format!(
        "touch {ready}; while [ ! -e {go} ]; do sleep 0.02; done",
        ready = ready.display(),
        go = go.display()
    );
    let mut sandbox = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sbx"))
            .args(["apply", "--backend", "ebpf"])
            .arg(&policy)
            .args(["--", "sh", "-c", &script])
            .spawn()
            .unwrap(),
    );
    while !ready.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let parent = sbx::backend::ebpf::cgroup2_mount().unwrap().join("sbx");
    let own: Vec<PathBuf> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(own.len(), 1, "one sandbox live: {own:?}");
    let child = own[0].join("sbxt-left");
    std::fs::create_dir(&child).unwrap();
    let mut stray = Command::new("sleep").arg("100").spawn().unwrap();
    std::fs::write(child.join("cgroup.procs"), stray.id().to_string()).unwrap();
    std::fs::write(&go, "").unwrap();
    let status = sandbox.0.wait().unwrap();
    let mut stray_status = None;
    for _ in 0..200 {
        stray_status = stray.try_wait().unwrap();
        if stray_status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if stray_status.is_none() {
        let _ = stray.kill();
        let _ = stray.wait();
        let _ = std::fs::remove_dir(&child);
    }
    assert!(status.success(), "{status:?}");
    assert!(
        stray_status.is_some_and(|s| !s.success()),
        "the stray process was killed: {stray_status:?}"
    );
    assert!(!own[0].exists(), "the sandbox's cgroup tree is gone");
    let again = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", "ebpf"])
        .arg(&policy)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
}

/// A sandbox the test started, ended with the test even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
