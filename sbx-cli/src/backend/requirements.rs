//! What each backend needs of the machine, checked: `sbx doctor` shows it, and
//! `--backend auto` takes eBPF where every eBPF check passes.

use std::path::Path;

use super::ebpf;
use crate::sys::{caps, landlock};

/// One finding: a check and, when it fails, why.
pub struct Check {
    pub what: String,
    pub problem: Option<String>,
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

pub fn nftables() -> Vec<Check> {
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

pub fn ebpf() -> Vec<Check> {
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
