//! What `sbx apply --events` records beyond denials: each event's verdict, audit flag and time,
//! and with `--events-allowed` the connections the policy allowed; and `sbx apply --audit`, which
//! lets through what the policy would refuse and reports it. The real sbx, a test host in a
//! namespace of its own, a DNS server the test starts, real clients inside. Needs root.

mod common;

use common::require_root;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::{PROBE, TestHost, exclusive};

const SERVICES: &[&str] = &["tcp:8080", "tcp:9090", "udp:5353"];

/// A TCP server of the command's own on its loopback, and a connection to it: never an event.
const OWN_LOOPBACK: &str = "import socket\n\
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
    c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.send(b'x')\n\
    print('own', a.recv(1).decode())";

struct Setup {
    host: TestHost,
    _dns: DnsServer,
    dir: Dir,
    policy: PathBuf,
    _guard: std::sync::MutexGuard<'static, ()>,
}

fn setup(network: &str) -> Setup {
    require_root();
    let guard = exclusive();
    let host = TestHost::start(SERVICES);
    let dns = DnsServer::start(Zone::new().addrs("other.test", &[host.v4.as_str()], 300));
    let dir = Dir::new();
    let policy = dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  {}\ndns:\n  servers: [\"{}\"]\n",
            network.replace("{v4}", &host.v4),
            dns.addr()
        ),
    );
    Setup {
        host,
        _dns: dns,
        dir,
        policy,
        _guard: guard,
    }
}

/// Runs the probes (TCP 8080, UDP 5353, TCP 9090 of the test host), then the own-loopback
/// connection, with `--events` (and `extra` options); returns sbx's output and the events.
fn run(backend: &str, setup: &Setup, extra: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let events = setup.dir.path().join("events.jsonl");
    let v4 = &setup.host.v4;
    let script = format!(
        "python3 {PROBE} tcp:{v4}:8080 udp:{v4}:5353 tcp:{v4}:9090; python3 -c \"{OWN_LOOPBACK}\""
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend, "--events"])
        .arg(&events)
        .args(extra)
        .arg(&setup.policy)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("tcp {v4} 8080 ok"),
        format!("udp {v4} 5353 ok"),
        format!("tcp {v4} 9090 denied"),
        "own x".to_string(),
    ] {
        assert!(stdout.contains(&line), "{line} missing: {out:?}");
    }
    (out, read_events(&events))
}

fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (verdict, destination, port, protocol) of each event, sorted.
fn summed(events: &[serde_json::Value]) -> Vec<(String, String, u64, u64)> {
    let mut got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["verdict"].as_str().unwrap().to_string(),
                e["destination"].as_str().unwrap().to_string(),
                e["port"].as_u64().unwrap(),
                e["protocol"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    got
}

/// Every event: `audit` false (no audit here), a time in RFC 3339 UTC to the millisecond within
/// the run, and on eBPF the process (python3 made every connection).
fn check_common_fields(backend: &str, events: &[serde_json::Value], started: SystemTime) {
    let ended = SystemTime::now();
    for e in events {
        assert_eq!(e["audit"], false, "{e}");
        let time = e["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{e}");
        let at = humantime::parse_rfc3339(time).unwrap();
        // The file has milliseconds: the start is rounded down to them.
        let floor = started - std::time::Duration::from_millis(1);
        assert!(floor <= at && at <= ended, "{e} not within the run");
        match backend {
            "ebpf" => {
                assert_eq!(e["command"], "python3", "{e}");
                assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "{e}");
            }
            _ => assert!(e["command"].is_null() && e["pid"].is_null(), "{e}"),
        }
    }
}

/// With `--events-allowed`, each allowed connection (TCP, and UDP) is an event with its
/// destination, port, protocol and `verdict: allowed`; the denial is still there with `verdict:
/// denied`, and the command's own loopback connection is no event. Only denials are in the
/// stderr summary.
fn allowed_connections_are_recorded(backend: &str) {
    let setup = setup(
        "mode: allowlist\n  allow:\n    - \"{v4}:8080\"\n    - {ip: \"{v4}\", ports: [5353], protocol: udp}",
    );
    let started = SystemTime::now();
    let (out, events) = run(backend, &setup, &["--events-allowed"]);
    let v4 = setup.host.v4.clone();
    assert_eq!(
        summed(&events),
        [
            ("allowed".into(), v4.clone(), 5353, 17),
            ("allowed".into(), v4.clone(), 8080, 6),
            ("denied".into(), v4.clone(), 9090, 6),
        ],
        "{events:?}"
    );
    check_common_fields(backend, &events, started);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("sbx: denied 1 time: {v4}:9090/tcp")),
        "{stderr}"
    );
}

/// In mode open too; and without `--events-allowed` only the denial is recorded.
fn in_mode_open_allowed_connections_are_recorded_only_when_asked(backend: &str) {
    let setup = setup("mode: open\n  deny: [\"{v4}:9090\"]");
    let started = SystemTime::now();
    let (_, events) = run(backend, &setup, &["--events-allowed"]);
    let v4 = setup.host.v4.clone();
    assert_eq!(
        summed(&events),
        [
            ("allowed".into(), v4.clone(), 5353, 17),
            ("allowed".into(), v4.clone(), 8080, 6),
            ("denied".into(), v4.clone(), 9090, 6),
        ],
        "{events:?}"
    );
    check_common_fields(backend, &events, started);
    let (_, events) = run(backend, &setup, &[]);
    assert_eq!(
        summed(&events),
        [("denied".into(), v4.clone(), 9090, 6)],
        "{events:?}"
    );
}

/// `--audit`: the command reaches what the policy denies (a port, a UDP service, a name outside
/// the policy, which sbx's DNS service answers from the upstream), nothing is refused, and each
/// would-be denial is reported as a denial is, with `audit: true`; the summary says it was an
/// audit. sbx's own hardening is not loosened: /proc/sys stays read-only.
fn audit_refuses_nothing_and_reports_each_would_be_denial(backend: &str) {
    let setup = setup("mode: allowlist\n  allow: [\"{v4}:8080\"]");
    let events = setup.dir.path().join("events.jsonl");
    let v4 = &setup.host.v4;
    let script = format!(
        "python3 {PROBE} tcp:{v4}:8080 tcp:{v4}:9090 udp:{v4}:5353 tcp:other.test:9090; \
         echo 1 > /proc/sys/net/ipv4/ip_forward || echo proc-sys-read-only"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--audit", "--backend", backend, "--events"])
        .arg(&events)
        .arg(&setup.policy)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("tcp {v4} 8080 ok"),
        format!("tcp {v4} 9090 ok"),
        format!("udp {v4} 5353 ok"),
        "tcp other.test 9090 ok".to_string(),
        "proc-sys-read-only".to_string(),
    ] {
        assert!(stdout.contains(&line), "{line} missing: {out:?}");
    }
    assert!(out.status.success(), "{out:?}");
    let events = read_events(&events);
    let mut reported: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e["verdict"], "denied", "{e}");
            assert_eq!(
                e["audit"], true,
                "every denial of an audit is a would-be one: {e}"
            );
            match e["hook"].as_str().unwrap() {
                "dns" => format!("dns {}", e["name"].as_str().unwrap()),
                _ => format!(
                    "{} {}:{}",
                    e["protocol"],
                    e["destination"].as_str().unwrap(),
                    e["port"]
                ),
            }
        })
        .collect();
    reported.sort();
    reported.dedup();
    assert_eq!(
        reported,
        [
            format!("17 {v4}:5353"),
            format!("6 {v4}:9090"),
            "dns other.test".to_string(),
        ],
        "{events:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sbx: audit: would have denied")
            && stderr.contains("(an audit: nothing was refused)")
            && !stderr.contains("sbx: denied"),
        "{stderr}"
    );
}

/// In audit `mode: none` refuses nothing either, on both backends (nftables then gives the
/// sandbox its link), and reports the would-be denial.
fn audit_of_mode_none_reaches_and_reports(backend: &str) {
    let setup = setup("mode: none");
    let events = setup.dir.path().join("events.jsonl");
    let v4 = &setup.host.v4;
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--audit", "--backend", backend, "--events"])
        .arg(&events)
        .arg(&setup.policy)
        .args(["--", "python3", PROBE, &format!("tcp:{v4}:8080")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("tcp {v4} 8080 ok")), "{out:?}");
    let events = read_events(&events);
    assert_eq!(
        summed(&events),
        [("denied".into(), v4.clone(), 8080, 6)],
        "{events:?}"
    );
    assert!(events.iter().all(|e| e["audit"] == true), "{events:?}");
}

/// Datagrams an unconnected UDP socket sends to one peer are one allowed event, not one per
/// datagram (eBPF: the send that adds the peer to those whose replies are admitted; nftables: the
/// new conntrack flow); a second peer is a second event.
fn a_stream_of_datagrams_to_one_peer_is_one_event(backend: &str) {
    let setup = setup("mode: open");
    let events = setup.dir.path().join("events.jsonl");
    let v4 = &setup.host.v4;
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n\
         for port in (5353, 5353, 5353, 5353, 5353, 9999):\n    s.sendto(b'x', ('{v4}', port))\n\
         print('echo', s.recvfrom(100)[0][:9].decode())"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args([
            "apply",
            "--backend",
            backend,
            "--events-allowed",
            "--events",
        ])
        .arg(&events)
        .arg(&setup.policy)
        .args(["--", "python3", "-c", &script])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo port 5353"),
        "{out:?}"
    );
    let events = read_events(&events);
    assert_eq!(
        summed(&events),
        [
            ("allowed".into(), v4.clone(), 5353, 17),
            ("allowed".into(), v4.clone(), 9999, 17),
        ],
        "{events:?}"
    );
    if backend == "ebpf" {
        assert!(events.iter().all(|e| e["hook"] == "sendmsg4"), "{events:?}");
    }
}

/// An allowed IPv6 connection is recorded with its IPv6 destination.
fn an_allowed_ipv6_connection_names_its_ipv6_destination(backend: &str) {
    let setup = setup("mode: open");
    let events = setup.dir.path().join("events.jsonl");
    let v6 = &setup.host.v6;
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args([
            "apply",
            "--backend",
            backend,
            "--events-allowed",
            "--events",
        ])
        .arg(&events)
        .arg(&setup.policy)
        .args(["--", "python3", PROBE, &format!("tcp:[{v6}]:8080")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("tcp {v6} 8080 ok")),
        "{out:?}"
    );
    let events = read_events(&events);
    assert_eq!(
        summed(&events),
        [("allowed".into(), v6.clone(), 8080, 6)],
        "{events:?}"
    );
}

/// A flood of denied sends: every event reaches the file, or sbx says how many it lost (the
/// kernel's buffer for them is shared and bounded); never fewer without a word.
fn a_flood_of_denials_is_recorded_or_its_losses_reported(backend: &str) {
    const SENDS: usize = 50_000;
    let setup = setup("mode: allowlist\n  allow: [\"{v4}:8080\"]");
    let events = setup.dir.path().join("events.jsonl");
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range({SENDS}):\n    try:\n        s.sendto(b'x', ('{}', 9999))\n    \
         except OSError:\n        pass\nprint('sent')",
        setup.host.v4
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend, "--events"])
        .arg(&events)
        .arg(&setup.policy)
        .args(["--", "python3", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{out:?}"
    );
    let recorded = read_events(&events)
        .iter()
        .filter(|e| e["port"] == 9999 && e["verdict"] == "denied")
        .count();
    eprintln!("{backend}: {recorded} of {SENDS} recorded; sbx said:\n{stderr}");
    if recorded < SENDS {
        let lost: usize = stderr
            .lines()
            .find_map(|l| l.strip_prefix("sbx: at least "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!("{recorded} of {SENDS} recorded, and no loss reported:\n{stderr}")
            });
        if backend == "ebpf" {
            // Counted per event (two CPUs racing on the count may miss a few).
            assert!(
                recorded + lost >= SENDS * 99 / 100,
                "{recorded} + {lost}:\n{stderr}"
            );
        }
    }
}

crate::on_both_backends!(
    a_flood_of_denials_is_recorded_or_its_losses_reported,
    allowed_connections_are_recorded,
    an_allowed_ipv6_connection_names_its_ipv6_destination,
    a_stream_of_datagrams_to_one_peer_is_one_event,
    in_mode_open_allowed_connections_are_recorded_only_when_asked,
    audit_refuses_nothing_and_reports_each_would_be_denial,
    audit_of_mode_none_reaches_and_reports,
);

/// `--events-allowed` says where the events would go only with `--events`: refused without it,
/// before anything runs.
#[test]
fn events_allowed_needs_events() {
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--events-allowed", "p.yaml", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--events <FILE>"), "{stderr}");
}
