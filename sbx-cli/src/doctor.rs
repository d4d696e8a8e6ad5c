//! `sbx doctor`: whether each backend can run on this machine, why not, and what sbx keeps on
//! the host between runs.

use std::fmt::Write;
use std::path::Path;

use crate::backend::ebpf;
use crate::sandbox::state::STATE_DIR;
use crate::sys::{caps, landlock};

/// One finding: a check and, when it fails, why.
struct Check {
    what: String,
    problem: Option<String>,
}

fn check(what: impl Into<String>, problem: Option<String>) -> Check {
    Check {
        what: what.into(),
        problem,
    }
}

fn privileges() -> Check {
    let missing = caps::missing_for_sbx();
    let problem = (!missing.is_empty()).then(|| {
        let names: Vec<String> = missing.iter().map(|c| c.to_string()).collect();
        format!("missing {}: run sbx as root (sudo)", names.join(", "))
    });
    check("privileges (CAP_NET_ADMIN, CAP_SYS_ADMIN)", problem)
}

fn nftables_checks() -> Vec<Check> {
    let nft = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output();
    let nft_problem = match nft {
        Err(_) => Some("the nft command is missing: apt-get install nftables".to_string()),
        Ok(out) if !out.status.success() => Some(format!(
            "nft cannot talk to the kernel: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    };
    let netns = Path::new("/proc/self/ns/net").exists();
    vec![
        privileges(),
        check(
            "network namespaces",
            (!netns).then(|| "the kernel has no network namespaces".into()),
        ),
        check("nftables (nft, nf_tables)", nft_problem),
    ]
}

/// cgroup v1 hierarchies with net_cls or net_prio: while one is mounted and used, the kernel
/// stops matching sockets to cgroup v2, and cgroup programs silently stop applying.
fn v1_net_controllers() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mut fields = fs.split(' ');
            if fields.next()? != "cgroup" {
                return None;
            }
            let options = fields.nth(1)?;
            let net = options
                .split(',')
                .any(|o| o == "net_cls" || o == "net_prio");
            net.then(|| mount.split(' ').nth(4).unwrap_or("?").to_string())
        })
        .collect()
}

fn ebpf_checks() -> Vec<Check> {
    let cgroup2 = ebpf::cgroup2_mount();
    let v1 = v1_net_controllers();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let landlock = landlock::abi_version();
    let bpf_problem = (!crate::sys::bpf::syscall_exists())
        .then(|| "the kernel has no bpf(2) system call".to_string());
    vec![
        privileges(),
        check(
            match &cgroup2 {
                Ok(path) => format!("cgroup v2 mounted at {}", path.display()),
                Err(_) => "cgroup v2 mounted".into(),
            },
            cgroup2.err().map(|e| e.to_string()),
        ),
        check(
            "no cgroup v1 net_cls/net_prio hierarchy (it would switch cgroup v2 socket matching off)",
            (!v1.is_empty()).then(|| {
                format!(
                    "mounted at {}: unmount it, or use --backend nftables",
                    v1.join(", ")
                )
            }),
        ),
        check("bpf(2) system call", bpf_problem),
        check(
            "kernel BTF (/sys/kernel/btf/vmlinux)",
            (!btf).then(|| "missing: the kernel was built without CONFIG_DEBUG_INFO_BTF".into()),
        ),
        check(
            "Landlock scopes (keep the host's abstract unix sockets out of reach)",
            (landlock < landlock::SCOPES_ABI).then(|| {
                format!(
                    "the kernel offers Landlock ABI {landlock}, scopes need 6 (Linux 6.12) with \
                     landlock in the lsm= boot list: use --backend nftables"
                )
            }),
        ),
    ]
}

fn render(out: &mut String, name: &str, checks: &[Check]) -> bool {
    let ok = checks.iter().all(|c| c.problem.is_none());
    let _ = writeln!(out, "{name}: {}", if ok { "can run" } else { "cannot run" });
    for c in checks {
        match &c.problem {
            None => {
                let _ = writeln!(out, "  ok   {}", c.what);
            }
            Some(problem) => {
                let _ = writeln!(out, "  FAIL {}: {problem}", c.what);
            }
        }
    }
    ok
}

/// The backend `--backend auto` takes: eBPF where it can run, else nftables.
pub fn auto_prefers_ebpf() -> bool {
    ebpf_checks().iter().all(|c| c.problem.is_none())
}

/// The report, and whether some backend can run.
pub fn report() -> (String, bool) {
    let mut out = String::new();
    let ebpf_ok = render(&mut out, "ebpf backend", &ebpf_checks());
    let nft_ok = render(&mut out, "nftables backend", &nftables_checks());
    let _ = writeln!(
        out,
        "--backend auto: {}",
        match (ebpf_ok, nft_ok) {
            (true, _) => "ebpf",
            (false, true) => "nftables",
            (false, false) => "neither can run",
        }
    );
    let _ = writeln!(out, "\nstate on this host (all under {STATE_DIR}):");
    // Unreadable (sbx's state is root's): say so rather than report an empty host.
    let unreadable = |path: &Path, e: &std::io::Error| {
        format!(
            "cannot tell ({} is not readable: {}; run `sudo sbx doctor`)",
            path.display(),
            e.kind()
        )
    };
    let slots_dir = Path::new(STATE_DIR).join("slots");
    let counted = |n: usize| format!("{n} (live or left by a dead sbx; `sbx gc` removes the dead)");
    let slots = match std::fs::read_dir(&slots_dir) {
        Ok(d) => counted(d.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => counted(0),
        Err(e) => unreadable(&slots_dir, &e),
    };
    let _ = writeln!(out, "  sandbox slots: {slots}");
    let pins = ebpf::bpf_dir();
    let listed = std::fs::read_dir(&pins).map(|d| {
        d.filter_map(|e| e.ok())
            .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Vec<String>>()
    });
    let pinned = match listed {
        Ok(pinned) => pinned,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            let _ = writeln!(out, "  eBPF programs and maps: {}", unreadable(&pins, &e));
            return (out, ebpf_ok || nft_ok);
        }
    };
    if pinned.is_empty() {
        let _ = writeln!(out, "  eBPF programs and maps: none pinned");
    } else {
        let _ = writeln!(
            out,
            "  eBPF programs and maps pinned in {} (kept between runs so a sandbox starts in \
             milliseconds; bounded: {} programs, {} maps of fixed maximum size; `sbx gc --all` \
             removes them): {}",
            pins.display(),
            ebpf::PROGRAMS,
            ebpf::MAPS.len(),
            pinned.join(", ")
        );
        let counts: Vec<String> = ebpf::pinned_entries()
            .into_iter()
            .map(|(map, n)| format!("{map} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  entries in the maps (all sandboxes): {}",
            counts.join(", ")
        );
        if let Some(bytes) = ebpf::pinned_memory() {
            let _ = writeln!(
                out,
                "  kernel memory held by the maps: {:.1} MiB",
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
    }
    (out, ebpf_ok || nft_ok)
}
