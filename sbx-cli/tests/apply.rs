//! `sbx apply` end to end: the real binary, real namespaces and nftables, test hosts in
//! namespaces of their own, a real DNS server, and a real client inside the sandbox. Needs root,
//! as CI has.
//!
//! The scenario table is written once and run against each backend.

mod common;

use common::require_root;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::{PROBE, TestHost, apply_probes, durations, exclusive, host_state, outcomes};

struct Scenario {
    name: &'static str,
    /// The `network:` block; `{v4}`, `{v6}`, `{net4}` name the test host.
    network: &'static str,
    /// Probe (`tcp:{v4}:8080`) and the outcome expected inside the sandbox.
    expect: &'static [(&'static str, &'static str)],
}

const SERVICES: &[&str] = &["tcp:8080", "tcp:9090", "udp:5353", "udp:5354"];

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "allow by address",
        network: "mode: allowlist\n  allow: [\"{v4}:8080\"]",
        expect: &[
            ("tcp:{v4}:8080", "ok"),
            ("tcp:{v4}:9090", "denied"),
            ("udp:{v4}:5353", "denied"),
        ],
    },
    Scenario {
        name: "allow by CIDR",
        network: "mode: allowlist\n  allow: [\"{net4}:8080\"]",
        expect: &[("tcp:{v4}:8080", "ok"), ("tcp:{v4}:9090", "denied")],
    },
    Scenario {
        name: "allow by name",
        network: "mode: allowlist\n  allow: [\"svc.test:8080\"]",
        expect: &[
            ("tcp:svc.test:8080", "ok"),
            ("tcp:svc.test:9090", "denied"),
            ("tcp:other.test:8080", "no-name"),
            ("tcp:{v4}:9090", "denied"),
        ],
    },
    Scenario {
        name: "allow by wildcard: answered addresses become reachable",
        network: "mode: allowlist\n  allow: [\"*.svc.test:8080\"]",
        expect: &[
            ("tcp:a.svc.test:8080", "ok"),
            ("tcp:b.c.svc.test:8080", "ok"),
            ("tcp:a.svc.test:9090", "denied"),
            ("tcp:svc.test:8080", "no-name"),
            ("tcp:evilsvc.test:8080", "no-name"),
        ],
    },
    Scenario {
        name: "allow by port range",
        network: "mode: allowlist\n  allow:\n    - {ip: \"{v4}\", ports: [\"8000-8100\"]}",
        expect: &[("tcp:{v4}:8080", "ok"), ("tcp:{v4}:9090", "denied")],
    },
    Scenario {
        name: "deny wins over allow",
        network: "mode: allowlist\n  allow: [\"{net4}\"]\n  deny: [\"{v4}:9090\"]",
        expect: &[
            ("tcp:{v4}:8080", "ok"),
            ("tcp:{v4}:9090", "denied"),
            ("udp:{v4}:5353", "ok"),
        ],
    },
    Scenario {
        name: "UDP allowed and denied",
        network: "mode: allowlist\n  allow:\n    - {ip: \"{v4}\", ports: [5353], protocol: udp}",
        expect: &[
            ("udp:{v4}:5353", "ok"),
            ("udp:{v4}:5354", "denied"),
            ("tcp:{v4}:8080", "denied"),
        ],
    },
    Scenario {
        name: "IPv6 allowed and denied",
        network: "mode: allowlist\n  allow: [\"[{v6}]:8080\"]",
        expect: &[
            ("tcp:[{v6}]:8080", "ok"),
            ("tcp:[{v6}]:9090", "denied"),
            ("tcp:{v4}:8080", "denied"),
        ],
    },
    Scenario {
        name: "none mode",
        network: "mode: none",
        expect: &[
            ("tcp:{v4}:8080", "denied"),
            ("tcp:[{v6}]:8080", "denied"),
            ("udp:{v4}:5353", "denied"),
        ],
    },
    Scenario {
        name: "open mode with deny",
        network: "mode: open\n  deny: [\"{v4}:9090\", \"[{v6}]:9090\"]",
        expect: &[
            ("tcp:{v4}:8080", "ok"),
            ("tcp:{v4}:9090", "denied"),
            ("tcp:[{v6}]:8080", "ok"),
            ("tcp:[{v6}]:9090", "denied"),
            ("udp:{v4}:5354", "ok"),
        ],
    },
];

/// Where most end-to-end tests start: the machine to themselves, a test host with `SERVICES`, a
/// DNS server that knows no name, and a policy that allows the host's TCP 8080 and nothing else.
struct Allow8080 {
    host: TestHost,
    _dns: DnsServer,
    dir: Dir,
    policy: PathBuf,
    // Last: fields drop in order, and the machine is given back once all of it is gone.
    _guard: std::sync::MutexGuard<'static, ()>,
}

fn allow_8080() -> Allow8080 {
    require_root();
    let guard = exclusive();
    let host = TestHost::start(SERVICES);
    let dns = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let network = fill("mode: allowlist\n  allow: [\"{v4}:8080\"]", &host);
    let policy = write_policy(&dir, "p.yaml", &network, &dns);
    Allow8080 {
        host,
        _dns: dns,
        dir,
        policy,
        _guard: guard,
    }
}

fn fill(template: &str, host: &TestHost) -> String {
    let net4 = format!("{}.0/24", host.v4.rsplit_once('.').unwrap().0);
    template
        .replace("{v4}", &host.v4)
        .replace("{v6}", &host.v6)
        .replace("{net4}", &net4)
}

fn write_policy(dir: &Dir, name: &str, network: &str, dns: &DnsServer) -> PathBuf {
    dir.write(
        name,
        &format!(
            "version: 1\nnetwork:\n  {network}\ndns:\n  servers: [\"{}\"]\n",
            dns.addr()
        ),
    )
}

fn zone(host: &TestHost) -> Zone {
    let addrs = [host.v4.as_str(), host.v6.as_str()];
    [
        "svc.test",
        "other.test",
        "a.svc.test",
        "b.c.svc.test",
        "evilsvc.test",
    ]
    .into_iter()
    .fold(Zone::new(), |zone, name| zone.addrs(name, &addrs, 300))
}

/// Runs every scenario against `backend`, checking the host after each.
fn scenario_table(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(SERVICES);
    let dns = DnsServer::start(zone(&host));
    let dir = Dir::new();
    let before = host_state();
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let policy = write_policy(&dir, "p.yaml", &fill(scenario.network, &host), &dns);
        let probes: Vec<String> = scenario
            .expect
            .iter()
            .map(|(p, _)| fill(p, &host))
            .collect();
        let out = apply_probes(backend, &policy, &probes);
        let got = outcomes(&out);
        for (probe, expected) in scenario.expect {
            let probe = fill(probe, &host);
            let actual = got.get(&probe).map(String::as_str).unwrap_or("(no result)");
            if actual != *expected {
                failures.push(format!(
                    "{}: {probe}: expected {expected}, got {actual}\n  stderr: {}",
                    scenario.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{}: sbx exited {:?}: {}",
                scenario.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let after = host_state();
        if after != before {
            failures.push(format!(
                "{}: the host changed:\nbefore {before:?}\nafter  {after:?}",
                scenario.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn scenarios_nftables() {
    scenario_table("nftables");
}

#[test]
fn scenarios_ebpf() {
    scenario_table("ebpf");
}

fn a_denied_tcp_connect_is_refused_at_once_not_timed_out(backend: &str) {
    let Allow8080 { host, policy, .. } = &allow_8080();
    let probe = fill("tcp:{v4}:9090", host);
    let out = apply_probes(backend, policy, std::slice::from_ref(&probe));
    assert_eq!(
        outcomes(&out).get(&probe).map(String::as_str),
        Some("denied"),
        "{out:?}"
    );
    // The figure itself is a benchmark's business; printed here for the record.
    eprintln!("denied connect took {} ms", durations(&out)[&probe]);
}

fn sbx() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
}

fn deny_all(dir: &Dir) -> PathBuf {
    dir.write("none.yaml", "version: 1\nnetwork: {mode: none}\n")
}

/// Where the tests of the command's own treatment start: the machine to themselves and a policy
/// of `mode: none`.
struct NoNetwork {
    dir: Dir,
    policy: PathBuf,
    // Last: the machine is given back once the rest is gone.
    _guard: std::sync::MutexGuard<'static, ()>,
}

fn no_network() -> NoNetwork {
    require_root();
    let guard = exclusive();
    let dir = Dir::new();
    let policy = deny_all(&dir);
    NoNetwork {
        dir,
        policy,
        _guard: guard,
    }
}

#[test]
fn exit_status_stdio_environment_and_directory_pass_through() {
    let NoNetwork { dir, policy, .. } = &no_network();
    let status = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let status = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "sh", "-c", "kill -TERM $$"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(128 + 15), "a death by SIGTERM is 143");

    let mut child = sbx()
        .arg("apply")
        .arg(policy)
        .args([
            "--",
            "sh",
            "-c",
            "read line; echo \"got $line in $PWD with $SBX_TEST_VAR\"; echo oops >&2",
        ])
        .current_dir(dir.path())
        .env("SBX_TEST_VAR", "kept")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let expected = format!("got hello in {} with kept\n", dir.path().display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
}

#[test]
fn signals_sent_to_sbx_reach_the_command() {
    let NoNetwork { dir, policy, .. } = &no_network();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut child = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

#[test]
fn the_command_runs_without_the_capabilities_that_could_undo_the_sandbox() {
    let NoNetwork { policy, .. } = &no_network();
    let out = sbx()
        .arg("apply")
        .arg(policy)
        .args([
            "--",
            "sh",
            "-c",
            "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    };
    assert!(text.starts_with("0\n"), "{text}");
    for set in ["CapEff:", "CapBnd:"] {
        let mask = u64::from_str_radix(&field(set), 16).unwrap();
        for (cap, bit) in [
            ("NET_ADMIN", 12),
            ("NET_RAW", 13),
            ("SYS_MODULE", 16),
            ("SYS_PTRACE", 19),
            ("SYS_ADMIN", 21),
            ("BPF", 39),
        ] {
            assert_eq!(mask & (1 << bit), 0, "{set} still has CAP_{cap}: {text}");
        }
    }
    assert_eq!(field("NoNewPrivs:"), "1");

    let out = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--user", "nobody", "--", "id", "-u"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "65534\n", "{out:?}");
    let out = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "id", "-u"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "65534\n",
        "runs as the sudo user: {out:?}"
    );
}

fn escape_attempts_as_root_inside_fail_and_change_nothing(backend: &str) {
    let Allow8080 { host, policy, .. } = &allow_8080();
    let script = format!(
        "nft flush ruleset 2>/dev/null; echo nft=$?\n\
         ip route add 10.250.0.0/24 dev lo 2>/dev/null; echo route=$?\n\
         ip addr add 10.250.0.1/32 dev lo 2>/dev/null; echo addr=$?\n\
         python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' 2>/dev/null; echo raw=$?\n\
         unshare --net true 2>/dev/null; echo unshare=$?\n\
         python3 {PROBE} tcp:{v4}:9090 tcp:{v4}:8080\n",
        v4 = host.v4
    );
    let before = host_state();
    let out = sbx()
        .args(["apply", "--backend", backend])
        .arg(policy)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for attempt in ["nft", "route", "addr", "raw", "unshare"] {
        assert!(
            !text.contains(&format!("{attempt}=0")),
            "{attempt} succeeded inside the sandbox:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("tcp {} 9090 denied", host.v4)),
        "{text}"
    );
    assert!(text.contains(&format!("tcp {} 8080 ok", host.v4)), "{text}");
    assert_eq!(host_state(), before);
}

fn the_command_reaches_servers_it_starts_on_its_own_loopback_but_not_the_hosts(backend: &str) {
    require_root();
    let _guard = exclusive();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let dir = Dir::new();
    let dns = DnsServer::start(Zone::new());
    let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/testsrv.py");
    let script = format!(
        "rm -f ready; python3 {server} 127.0.0.1 tcp:7000 > ready & while [ ! -s ready ]; do sleep 0.02; done\n\
         python3 {PROBE} tcp:127.0.0.1:7000 tcp:127.0.0.1:{host_port}"
    );
    for mode in [
        "mode: none",
        "mode: open",
        "mode: allowlist\n  allow: [\"192.0.2.10\"]",
    ] {
        let policy = write_policy(&dir, "p.yaml", mode, &dns);
        let out = sbx()
            .args(["apply", "--backend", backend])
            .arg(&policy)
            .args(["--", "sh", "-c", &script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("tcp 127.0.0.1 7000 ok"),
            "{mode}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("tcp 127.0.0.1 {host_port} denied")),
            "{mode}: {text}"
        );
    }
    drop(listener);
}

fn twenty_sandboxes_at_once_each_see_only_their_own_verdicts(backend: &str) {
    require_root();
    let _guard = exclusive();
    let ports: Vec<String> = (0..20).map(|i| format!("tcp:{}", 8100 + i)).collect();
    let services: Vec<&str> = ports.iter().map(String::as_str).collect();
    let host = TestHost::start(&services);
    let dns = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let before = host_state();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let policy = write_policy(
                &dir,
                &format!("p{i}.yaml"),
                &format!("mode: allowlist\n  allow: [\"{}:{}\"]", host.v4, 8100 + i),
                &dns,
            );
            let own = format!("tcp:{}:{}", host.v4, 8100 + i);
            let other = format!("tcp:{}:{}", host.v4, 8100 + (i + 1) % 20);
            sbx()
                .args(["apply", "--backend", backend])
                .arg(&policy)
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!("sleep 0.3; python3 {PROBE} {own} {other}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let got = outcomes(&out);
        let own = format!("tcp:{}:{}", host.v4, 8100 + i);
        let other = format!("tcp:{}:{}", host.v4, 8100 + (i + 1) % 20);
        assert_eq!(
            got.get(&own).map(String::as_str),
            Some("ok"),
            "sandbox {i}: {out:?}"
        );
        assert_eq!(
            got.get(&other).map(String::as_str),
            Some("denied"),
            "sandbox {i}: {out:?}"
        );
    }
    assert_eq!(host_state(), before);
}

fn after_sbx_is_killed_its_command_dies_and_the_next_run_or_gc_cleans_up(backend: &str) {
    let Allow8080 { dir, policy, .. } = &allow_8080();
    let before = host_state();
    for cleaner in ["gc", "next run"] {
        let pidfile = dir.path().join("pid");
        let _ = std::fs::remove_file(&pidfile);
        // A daemon that leaves its session: it must die with sbx all the same. Its sleep is of a
        // length no other process on the machine has, so that a search by command line finds it
        // and nothing else.
        let sleep = format!("sleep 60.{}{}", std::process::id(), cleaner.len());
        let script = format!(
            "setsid sh -c 'echo $$ > {}; exec {sleep}' & wait",
            pidfile.display()
        );
        let mut child = sbx()
            .args(["apply", "--backend", backend])
            .arg(policy)
            .args(["--", "sh", "-c", &script])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&pidfile)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "the command did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_ne!(host_state(), before, "a live sandbox shows on the host");
        child.kill().unwrap();
        child.wait().unwrap();
        // The daemon's pid is in the sandbox's PID namespace; find it by its command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive = Command::new("pgrep")
                .args(["-f", &format!("^{sleep}$")])
                .output()
                .unwrap();
            if !alive.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sandboxed daemon outlived sbx"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        match cleaner {
            "gc" => {
                let out = sbx().arg("gc").output().unwrap();
                assert!(out.status.success(), "{out:?}");
                assert!(
                    String::from_utf8_lossy(&out.stderr)
                        .contains("removed what dead sandboxes left"),
                    "{out:?}"
                );
            }
            _ => {
                let out = sbx()
                    .arg("apply")
                    .arg(deny_all(dir))
                    .args(["--", "true"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
        }
        assert_eq!(host_state(), before, "after {cleaner}");
    }
}

fn gc_leaves_live_sandboxes_alone(backend: &str) {
    let Allow8080 {
        host, dir, policy, ..
    } = &allow_8080();
    let go = dir.path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; python3 {PROBE} tcp:{}:8080",
        go.display(),
        host.v4
    );
    let child = sbx()
        .args(["apply", "--backend", backend])
        .arg(policy)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = sbx().arg("gc").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "no dead sandboxes\n");
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("tcp {} 8080 ok", host.v4)),
        "{out:?}"
    );
}

#[test]
fn bad_input_fails_clearly_and_leaves_the_host_unchanged() {
    let NoNetwork { dir, policy, .. } = &no_network();
    let before = host_state();

    let out = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "no-such-program-sbx"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: `no-such-program-sbx`: command not found in PATH\n"
    );
    let out = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    // A file that is not executable: what a shell answers, 126.
    let script = dir.write("not-executable.sh", "#!/bin/sh\ntrue\n");
    let out = sbx()
        .arg("apply")
        .arg(policy)
        .arg("--")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not executable"),
        "{out:?}"
    );

    let unreadable = dir.write("secret.yaml", "version: 1\nnetwork: {mode: none}\n");
    let out = apply_as_nobody(policy);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sbx needs root"),
        "{out:?}"
    );

    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let out = apply_as_nobody(&unreadable);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );

    let out = sbx()
        .arg("apply")
        .arg(dir.path().join("missing.yaml"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such file"),
        "{out:?}"
    );
    assert_eq!(host_state(), before);
}

/// `sbx apply POLICY -- true` as uid 65534, without root.
fn apply_as_nobody(policy: &std::path::Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([env!("CARGO_BIN_EXE_sbx"), "apply"])
        .arg(policy)
        .args(["--", "true"])
        .output()
        .unwrap()
}

/// An ordinary user cannot read sbx's state (root's, 0700): `sbx doctor` says it cannot tell
/// instead of reporting an empty host.
#[test]
fn doctor_as_an_ordinary_user_says_what_it_cannot_see() {
    let NoNetwork { policy, .. } = &no_network();
    // Leaves sbx's state directory in place, as any run does.
    let out = sbx()
        .arg("apply")
        .arg(policy)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([env!("CARGO_BIN_EXE_sbx"), "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sandbox slots: cannot tell"), "{text}");
    assert!(text.contains("run `sudo sbx doctor`"), "{text}");
    assert!(!text.contains("none pinned"), "{text}");
}

#[test]
fn dry_run_prints_the_ruleset_and_touches_nothing() {
    let _guard = exclusive();
    let dir = Dir::new();
    let dns = DnsServer::start(Zone::new());
    let policy = write_policy(
        &dir,
        "p.yaml",
        "mode: allowlist\n  allow: [\"10.213.200.2:8080\"]",
        &dns,
    );
    let before = host_state();
    let out = sbx()
        .args(["apply", "--dry-run", "--backend", "nftables"])
        .arg(&policy)
        .args(["--", "true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("backend: nftables"), "{text}");
    assert!(text.contains("\"10.213.200.2\""), "{text}");
    assert!(text.contains("\"tcp reset\""), "{text}");
    assert!(text.contains("command: true"), "{text}");
    assert_eq!(host_state(), before);
}

// Each test above, once per backend.
crate::on_both_backends!(
    escape_attempts_as_root_inside_fail_and_change_nothing,
    the_command_reaches_servers_it_starts_on_its_own_loopback_but_not_the_hosts,
    twenty_sandboxes_at_once_each_see_only_their_own_verdicts,
    after_sbx_is_killed_its_command_dies_and_the_next_run_or_gc_cleans_up,
    gc_leaves_live_sandboxes_alone,
    a_denied_tcp_connect_is_refused_at_once_not_timed_out,
    thousands_of_single_addresses_allow_each_and_only_those,
    bypass_attempts_fail,
    denials_are_summed_up_and_written_as_events,
    an_interactive_shell_gets_the_terminal,
);

/// `sbx apply p.yaml -- bash` on a terminal is an interactive shell: it has the terminal, reads
/// what is typed, and its exit status comes back. `script` (util-linux) plays the terminal.
fn an_interactive_shell_gets_the_terminal(backend: &str) {
    let NoNetwork { policy, .. } = &no_network();
    let command = format!(
        "{} apply --backend {backend} {} -- bash --norc -i",
        env!("CARGO_BIN_EXE_sbx"),
        policy.display()
    );
    let mut script = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    script
        .stdin
        .take()
        .unwrap()
        .write_all(b"tty >/dev/null && echo has-a-tty; echo typed $((6*7))\nexit 3\n")
        .unwrap();
    let out = script.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("has-a-tty") && text.contains("typed 42"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(3), "{text}");
}

/// Every refused connection, TCP and UDP, is in the summary on stderr and in `--events`, with
/// its destination: on both backends (only eBPF knows the process behind it).
fn denials_are_summed_up_and_written_as_events(backend: &str) {
    let Allow8080 {
        host, dir, policy, ..
    } = &allow_8080();
    let events = dir.path().join("events.jsonl");
    let v4 = &host.v4;
    let out = sbx()
        .args(["apply", "--backend", backend, "--events"])
        .arg(&events)
        .arg(policy)
        .args(["--", "python3", PROBE])
        .args([
            format!("tcp:{v4}:8080"),
            format!("tcp:{v4}:9090"),
            format!("tcp:{v4}:9090"),
        ])
        .arg(format!("udp:{v4}:5353"))
        .output()
        .unwrap();
    let probed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(probed.matches(" denied ").count(), 3, "{probed}");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("sbx: denied 3 times:")
            && summary.contains(&format!("{v4}:9090/tcp"))
            && summary.contains(&format!("{v4}:5353/udp")),
        "{summary}"
    );
    let mut got: Vec<(String, u64, u64)> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| {
            (
                e["destination"].as_str().unwrap().to_string(),
                e["port"].as_u64().unwrap(),
                e["protocol"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let want = [
        (v4.clone(), 5353, 17),
        (v4.clone(), 9090, 6),
        (v4.clone(), 9090, 6),
    ];
    assert_eq!(got, want);
}

/// The ways around a connect hook issue 5 names, against a policy that allows TCP 8080 and UDP
/// 5353 of a test host and nothing else of it.
fn bypass_attempts_fail(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(SERVICES);
    let dns = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let network = "mode: allowlist\n  allow:\n    - \"{v4}:8080\"\n    - {ip: \"{v4}\", ports: [5353], protocol: udp}";
    let policy = write_policy(&dir, "p.yaml", &fill(network, &host), &dns);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/bypass.py");
    // The host's root cgroup: for the eBPF backend, leaving the sandbox's cgroup is an escape.
    let procs = match backend {
        "ebpf" => format!(
            "{}/cgroup.procs",
            sbx::backend::ebpf::cgroup2_mount().unwrap().display()
        ),
        _ => "-".to_string(),
    };
    let before = host_state();
    let out = sbx()
        .args(["apply", "--backend", backend])
        .arg(&policy)
        .args([
            "--", "python3", script, &host.v4, "8080", "9090", "5353", "5354", &procs,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let outcome = |attempt: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{attempt} ")))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| {
                panic!(
                    "{attempt} missing:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string()
    };
    for (attempt, expected) in [
        ("mapped-allowed", "open"),
        ("mapped-denied", "denied"),
        ("fastopen-allowed", "open"),
        ("fastopen-denied", "denied"),
        ("sendto-allowed", "open"),
        ("sendto-denied", "denied"),
        ("raw-socket", "denied"),
        ("packet-socket", "denied"),
        ("daemon-denied", "denied"),
        ("after-move-denied", "denied"),
    ] {
        assert_eq!(outcome(attempt), expected, "{backend}: {attempt}:\n{text}");
    }
    if backend == "ebpf" {
        assert_eq!(outcome("cgroup-move"), "denied", "{text}");
    }
    assert_eq!(host_state(), before);
}

/// `sbx apply --backend ebpf POLICY -- true`.
fn true_on_ebpf(policy: &std::path::Path) -> std::process::ExitStatus {
    sbx()
        .args(["apply", "--backend", "ebpf"])
        .arg(policy)
        .args(["--", "true"])
        .status()
        .unwrap()
}

#[test]
fn gc_all_removes_the_pinned_ebpf_state_and_the_next_run_loads_it_again() {
    let NoNetwork { policy, .. } = &no_network();
    let pinned = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/sbx/bpf"))
    };
    let run = || true_on_ebpf(policy);
    assert!(run().success());
    assert!(
        pinned(),
        "the eBPF backend pins its programs in /run/sbx/bpf"
    );
    let doctor = sbx().arg("doctor").output().unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    let held: f64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("kernel memory held by the maps: "))
        .and_then(|v| v.trim_end_matches(" MiB").parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(held > 1.0, "{report}");
    let out = sbx().args(["gc", "--all"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("removed sbx's pinned eBPF programs and maps"),
        "{said}"
    );
    assert!(!pinned(), "gc --all unmounts /run/sbx/bpf");
    assert!(
        !std::path::Path::new("/run/sbx").exists(),
        "nothing of sbx is left in /run"
    );
    let cgroup2 = sbx::backend::ebpf::cgroup2_mount().unwrap();
    assert!(!cgroup2.join("sbx").exists(), "no cgroup of sbx is left");
    assert!(
        run().success(),
        "the next eBPF sandbox loads the programs again"
    );
    assert!(pinned());
}

#[test]
fn pins_of_another_sbx_build_go_when_no_sandbox_is_live() {
    let NoNetwork { policy, .. } = &no_network();
    let run = || true_on_ebpf(policy);
    assert!(run().success());
    // What an upgrade leaves: the pins of the previous build, under its own object hash.
    let old = std::path::Path::new("/run/sbx/bpf/0000000000000000");
    std::fs::create_dir(old).unwrap();
    assert!(run().success());
    assert!(!old.exists(), "the other build's pins are still there");
    let builds = std::fs::read_dir("/run/sbx/bpf")
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(builds, 1, "one build's pins remain");
}

#[test]
fn ebpf_denials_are_reported_each_to_its_own_sandbox() {
    require_root();
    let _guard = exclusive();
    let ports: Vec<String> = (0..4).map(|i| format!("tcp:{}", 8200 + i)).collect();
    let services: Vec<&str> = ports.iter().map(String::as_str).collect();
    let host = TestHost::start(&services);
    let dns = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let policy = write_policy(&dir, "p.yaml", "mode: none", &dns);
    // Two sandboxes at once, each denied its own ports, several times, while the other drains.
    let children: Vec<_> = (0..2)
        .map(|i| {
            let events = dir.path().join(format!("events{i}.jsonl"));
            let probes: Vec<String> = (0..30)
                .map(|n| format!("tcp:{}:{}", host.v4, 8200 + 2 * i + n % 2))
                .collect();
            let child = sbx()
                .args(["apply", "--backend", "ebpf", "--events"])
                .arg(&events)
                .arg(&policy)
                .args(["--", "python3", PROBE])
                .args(&probes)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child, events, i)
        })
        .collect();
    for (child, events, i) in children {
        let out = child.wait_with_output().unwrap();
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("sbx: denied 30 times:"), "{summary}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 30, "sandbox {i}: {lines:#?}");
        for event in &lines {
            let port = event["port"].as_u64().unwrap();
            assert!(
                port == 8200 + 2 * i as u64 || port == 8201 + 2 * i as u64,
                "sandbox {i} got {event}"
            );
            assert_eq!(event["destination"], host.v4.as_str());
            assert_eq!(
                (event["protocol"].as_u64(), event["hook"].as_str()),
                (Some(6), Some("connect4"))
            );
            assert_eq!(event["command"], "python3");
        }
    }
}

#[test]
fn a_named_host_loopback_service_is_reachable_on_both_backends() {
    require_root();
    let _guard = exclusive();
    let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/testsrv.py");
    let mut host_service = Command::new("python3")
        .args([server, "127.0.0.1", "tcp:17171", "tcp:17172"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(host_service.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let dir = Dir::new();
    let dns = DnsServer::start(Zone::new());
    let before = host_state();
    let probes = [
        "tcp:127.0.0.1:17171".to_string(),
        "tcp:127.0.0.1:17172".to_string(),
    ];
    for backend in ["nftables", "ebpf"] {
        for entry in ["127.0.0.1:17171", "localhost:17171"] {
            let network = format!("mode: allowlist\n  allow: [\"{entry}\"]");
            let policy = write_policy(&dir, "p.yaml", &network, &dns);
            let out = apply_probes(backend, &policy, &probes);
            let got = outcomes(&out);
            let what = format!("{backend}, {entry}: {out:?}");
            assert_eq!(
                got.get(&probes[0]).map(String::as_str),
                Some("ok"),
                "{what}"
            );
            assert_eq!(
                got.get(&probes[1]).map(String::as_str),
                Some("denied"),
                "{what}"
            );
        }
    }
    assert_eq!(host_state(), before, "no host-wide setting changed");

    // Other loopback addresses of the host are out of an nftables sandbox's reach: refused.
    let policy = write_policy(
        &dir,
        "p.yaml",
        "mode: allowlist\n  allow: [\"127.0.0.5:17171\"]",
        &dns,
    );
    let out = apply_probes("nftables", &policy, &probes);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the nftables backend cannot enforce this policy"),
        "{said}"
    );
    assert!(
        said.contains("`127.0.0.5:17171` (") && said.contains("p.yaml:"),
        "{said}"
    );
    let _ = host_service.kill();
    let _ = host_service.wait();
}

#[test]
fn an_ebpf_sandbox_leaves_no_map_entries_behind() {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(SERVICES);
    let dns = DnsServer::start(zone(&host));
    let dir = Dir::new();
    // Rules, a name resolved at start, a wildcard answered later, a port the command binds, a
    // denial: every kind of entry the programs' maps hold.
    let network = "mode: allowlist\n  allow: [\"svc.test:8080\", \"*.svc.test:8080\", \"{net4}:9090\", \"[{v6}]:8080\"]\n  deny: [\"{v4}:9090\"]";
    let policy = write_policy(&dir, "p.yaml", &fill(network, &host), &dns);
    let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/testsrv.py");
    let script = format!(
        "rm -f ready; python3 {server} 127.0.0.1 tcp:7001 > ready & while [ ! -s ready ]; do sleep 0.02; done\n\
         python3 {PROBE} tcp:a.svc.test:8080 tcp:{v4}:9090 tcp:127.0.0.1:7001",
        v4 = host.v4
    );
    let out = sbx()
        .args(["apply", "--backend", "ebpf"])
        .arg(&policy)
        .args(["--", "sh", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("a.svc.test 8080 ok")
            && text.contains("9090 denied")
            && text.contains("7001 ok"),
        "{text}"
    );
    assert_no_map_entries();
}

/// The routed block of `thousands_of_single_addresses_allow_each_and_only_those`.
const SINGLES_BLOCK: &str = "10.215.0.0/18";
/// Allowed addresses in it: 4,196, the eBPF backend's table chunks of 1,024 four full and one
/// partial.
const SINGLES: u32 = 4196;

/// The `i`th allowed address (every other one, from 10.215.0.2), or its odd neighbour above.
fn single(i: u32, neighbour: bool) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0ad7_0002 + 2 * i + u32::from(neighbour))
}

/// Thousands of single addresses: each allowed one is reachable, its neighbours and other ports
/// are not, wherever it falls (on eBPF, the first and last of a table, either side of a chunk
/// boundary, a partial last chunk, a middle IPv6 chunk).
fn thousands_of_single_addresses_allow_each_and_only_those(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start_with(&["tcp:8080", "tcp:9090"], Some(SINGLES_BLOCK));
    let dns = DnsServer::start(zone(&host));
    let dir = Dir::new();
    let mut network = String::from(
        "mode: allowlist
  allow:
",
    );
    for i in 0..SINGLES {
        network.push_str(&format!(
            "    - {}:8080
",
            single(i, false)
        ));
    }
    // The test host's IPv6 address among 300 below it and 300 above (chunks of 256), half of
    // them differing from it in the high 64 bits, half only in the low.
    let v6: std::net::Ipv6Addr = host.v6.parse().unwrap();
    for offset in 1..=150u128 {
        let apart = [offset << 16, offset << 80];
        for near in apart
            .map(|d| [u128::from(v6) - d, u128::from(v6) + d])
            .concat()
        {
            network.push_str(&format!(
                "    - \"[{}]:8080\"\n",
                std::net::Ipv6Addr::from(near)
            ));
        }
    }
    network.push_str(&format!("    - \"[{v6}]:8080\"\n"));
    let policy = write_policy(&dir, "p.yaml", &network, &dns);
    let allowed = [0, 1023, 1024, 2500, 3071, 3072, 4095, 4096, SINGLES - 1];
    let mut probes: Vec<String> = allowed
        .iter()
        .map(|&i| format!("tcp:{}:8080", single(i, false)))
        .collect();
    probes.push(format!("tcp:[{v6}]:8080"));
    let mut expected: Vec<&str> = vec!["ok"; probes.len()];
    let denied = [
        format!("tcp:{}:8080", std::net::Ipv4Addr::from(0x0ad7_0001)),
        format!("tcp:{}:8080", single(1023, true)),
        format!("tcp:{}:8080", single(2500, true)),
        format!("tcp:{}:8080", single(SINGLES - 1, true)),
        format!("tcp:{}:8080", single(SINGLES, false)),
        format!("tcp:{}:9090", single(2500, false)),
        format!("tcp:[{v6}]:9090"),
        format!(
            "tcp:[{}]:8080",
            std::net::Ipv6Addr::from(u128::from(v6) + 1)
        ),
    ];
    expected.extend(vec!["denied"; denied.len()]);
    probes.extend(denied);
    let out = sbx()
        .args(["apply", "--backend", backend])
        .arg(&policy)
        .args(["--", "python3", PROBE])
        .args(&probes)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = text
        .lines()
        .map(|l| l.split(' ').nth(3).unwrap_or("?"))
        .collect();
    assert_eq!(
        got,
        expected,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(host);
    if backend == "ebpf" {
        assert_no_map_entries();
    }
}

/// Every map of the eBPF backend is empty (no sandbox is live).
fn assert_no_map_entries() {
    let doctor = sbx().arg("doctor").output().unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("entries in the maps"))
        .unwrap_or_else(|| panic!("{report}"));
    for map in sbx_common::SANDBOX_MAPS {
        assert!(
            line.contains(&format!("{map} 0")),
            "{map} kept entries: {line}"
        );
    }
}

#[test]
fn ebpf_addresses_beyond_a_tables_capacity_are_enforced_through_the_tries() {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(SERVICES);
    let dns = DnsServer::start(zone(&host));
    let dir = Dir::new();
    // More single addresses than a sandbox's table holds (65,536), none adjacent, all sorting
    // before the test host's, which therefore is among those that spill to the trie.
    let mut network = String::from("mode: allowlist\n  allow:\n");
    for i in 0..70_000u32 {
        let [_, a, b, c] = (0x0a01_0000 + 2 * i).to_be_bytes();
        network.push_str(&format!("    - 10.{a}.{b}.{c}:8080\n"));
    }
    network.push_str(&format!("    - {}:8080\n", host.v4));
    let policy = write_policy(&dir, "p.yaml", &network, &dns);
    let out = sbx()
        .args(["apply", "--backend", "ebpf"])
        .arg(&policy)
        .args(["--", "python3", PROBE])
        .args([
            format!("tcp:{}:8080", host.v4),
            format!("tcp:{}:9090", host.v4),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("8080 ok") && text.contains("9090 denied"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_map_entries();
}
