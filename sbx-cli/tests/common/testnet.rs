//! Test hosts for end-to-end tests, per the project's network test rules: each lives in a
//! network namespace the test creates (`sbxt-K`), reached through a veth pair on a subnet of its
//! own (10.213.K.0/24, fd5b:7e57:0:K::/64), and is removed when dropped, also when the test
//! fails. Traffic goes only to these hosts and to loopback.

#![allow(dead_code)] // each test and benchmark binary uses its own subset

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Runs each named `fn(backend: &str)` once per backend, as `nftables::NAME` and `ebpf::NAME`,
/// so that one test body shows both enforce the same verdicts.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod nftables {
            $(#[test] fn $test() { super::$test("nftables") })*
        }
        mod ebpf {
            $(#[test] fn $test() { super::$test("ebpf") })*
        }
    };
}

/// Tests that start sandboxes or test hosts take this, so that the host state each one checks
/// is its own.
static HOST: Mutex<()> = Mutex::new(());

pub fn exclusive() -> MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

static NEXT: AtomicU32 = AtomicU32::new(1);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct TestHost {
    pub netns: String,
    link: String,
    /// The host's addresses, as the sandbox reaches them.
    pub v4: String,
    pub v6: String,
    server: Child,
}

impl TestHost {
    /// A host serving `services` (`tcp:8080`, `udp:5353`, …) on both of its addresses.
    pub fn start(services: &[&str]) -> TestHost {
        TestHost::start_with(services, None)
    }

    /// As `start`, and also answering on every address of `block` (an IPv4 CIDR routed to it),
    /// for tests that need many distinct destinations.
    pub fn start_with(services: &[&str], block: Option<&str>) -> TestHost {
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(k < 250, "too many test hosts in one test run");
        let netns = format!("sbxt-{k}");
        let link = format!("sbxt{k}h");
        let peer = format!("sbxt{k}s");
        // A previous run killed before its clean-up may have left these; they are ours.
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        let (v4, v6) = (format!("10.213.{k}.2"), format!("fd5b:7e57:0:{k}::2"));
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", &peer, "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("10.213.{k}.1/24"), "dev", &link]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd5b:7e57:0:{k}::1/64"),
            "dev",
            &link,
            "nodad",
        ]);
        ip(&["link", "set", &link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{v4}/24"), "dev", &peer]);
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            &peer,
            "nodad",
        ]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &format!("10.213.{k}.1")]);
        inside(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd5b:7e57:0:{k}::1"),
        ]);
        if let Some(block) = block {
            inside(&["route", "add", "local", block, "dev", "lo"]);
            ip(&["route", "add", block, "via", &v4]);
        }
        let listen = match block {
            // Wildcard listeners: the block's addresses are local only by route.
            Some(_) => "0.0.0.0,::".to_string(),
            None => format!("{v4},{v6}"),
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/testsrv.py");
        let mut server = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", script, &listen])
            .args(services)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test server");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the test server did not start");
        TestHost {
            netns,
            link,
            v4,
            v6,
            server,
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

/// What sbx may change on the host while it runs and must restore: namespaces, links, routes,
/// nftables tables, its state files, forwarding sysctls, mounts.
#[derive(Debug, PartialEq, Eq)]
pub struct HostState(BTreeMap<&'static str, String>);

fn stdout(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn host_state() -> HostState {
    let mut state = BTreeMap::new();
    state.insert("netns", stdout("ip", &["netns", "list"]));
    let links: Vec<String> = stdout("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap().to_string())
        })
        .collect();
    state.insert("links", links.join(" "));
    state.insert(
        "routes",
        stdout("ip", &["route", "show"]) + &stdout("ip", &["-6", "route", "show"]),
    );
    state.insert("nft", stdout("nft", &["list", "tables"]));
    let slots = std::fs::read_dir("/run/sbx/slots")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    state.insert("slots", slots);
    let other_state = std::fs::read_dir("/run/sbx")
        .map(|d| {
            let mut names: Vec<String> = d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && n != "events.lock" && n != "slots" && n != "bpf")
                .collect();
            names.sort();
            names.join(" ")
        })
        .unwrap_or_default();
    state.insert("state files", other_state);
    for sysctl in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
        let value = std::fs::read_to_string(Path::new("/proc/sys").join(sysctl)).unwrap();
        state.insert(
            if sysctl.contains("ipv4") {
                "ip_forward"
            } else {
                "ipv6 forwarding"
            },
            value,
        );
    }
    // The eBPF backend keeps its programs and maps pinned in /run/sbx/bpf between runs, by
    // design (README; `sbx gc --all` removes them, tested there): the first eBPF sandbox on a
    // machine mounts it. Every other mount counts.
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) != Some("/run/sbx/bpf"))
        .map(|l| l.split(' ').skip(3).collect::<Vec<_>>().join(" "))
        .collect();
    state.insert("mounts", mounts.join("\n"));
    let cgroups = sbx::backend::ebpf::cgroup2_mount()
        .ok()
        .and_then(|m| std::fs::read_dir(m.join("sbx")).ok())
        .map(|d| {
            let mut names: Vec<String> = d
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.join(" ")
        })
        .unwrap_or_default();
    state.insert("sandbox cgroups", cgroups);
    HostState(state)
}

/// The client run inside sandboxes (see its docstring for its arguments and output).
pub const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/probe.py");

/// The real `sbx apply` with `policy`, running the probe client with `probes`.
pub fn apply_probes(backend: &str, policy: &Path, probes: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend])
        .arg(policy)
        .args(["--", "python3", PROBE])
        .args(probes)
        .output()
        .expect("run sbx apply")
}

/// `probe → outcome` from the probe client's output.
pub fn outcomes(output: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.len() == 6).then(|| {
                let host = if fields[1].contains(':') {
                    format!("[{}]", fields[1])
                } else {
                    fields[1].to_string()
                };
                (
                    format!("{}:{host}:{}", fields[0], fields[2]),
                    fields[3].to_string(),
                )
            })
        })
        .collect()
}

/// Milliseconds each probe took, by probe.
pub fn durations(output: &Output) -> BTreeMap<String, u64> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.len() == 6).then(|| {
                (
                    format!("{}:{}:{}", fields[0], fields[1], fields[2]),
                    fields[4].parse().unwrap_or(0),
                )
            })
        })
        .collect()
}
