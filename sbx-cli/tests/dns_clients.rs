//! The DNS gate as real clients see it (dig, glibc's getaddrinfo through getent and Python), on
//! both backends: the first answer is as prompt as any, a name whose other type is NXDOMAIN
//! resolves, and replies look like a resolver's (the question's case, EDNS echoed, truncation
//! to the client's size with the whole answer over TCP, several questions refused). Real DNS
//! servers started by the tests, on loopback, answering with addresses of test hosts (never
//! connected to: only the answers matter here). Needs root.

mod common;

use common::{require_root, sbx_sh};

use std::net::IpAddr;
use std::process::Output;

use common::Dir;
use common::dns::{Behaviour, DnsServer, Zone};
use common::testnet::{TestHost, exclusive};
use hickory_resolver::proto::rr::RecordType;

/// Routed to the test host of the large answers: many distinct addresses.
const BLOCK: &str = "10.216.0.0/24";

fn policy(dir: &Dir, allow: &str, dns: &DnsServer, extra_dns: &str) -> std::path::PathBuf {
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [{allow}]\ndns:\n  servers: [\"{}\"]\n{extra_dns}",
            dns.addr()
        ),
    )
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first question of an exact name, with a timeout shorter than the 20 ms hickory waited
/// when it found the start-up resolution's connection dead (its runtime gone): answered, not
/// SERVFAIL.
fn the_first_answer_does_not_wait_on_the_start_up_resolution(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let dns = DnsServer::start(Zone::new().addrs("first.c.test", &[host.v4.as_str()], 300));
    let dir = Dir::new();
    let policy = policy(
        &dir,
        "\"first.c.test:8080\"",
        &dns,
        "  timeout: 15ms\n  attempts: 1\n",
    );
    let out = sbx_sh(
        backend,
        &policy,
        "dig +tries=1 +time=2 first.c.test | grep -o 'status: [A-Z]*'; \
         dig +short +tries=1 +time=2 first.c.test",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("status: NOERROR\n{}\n", host.v4),
        "{}",
        text(&out)
    );
}

/// An A record, and NXDOMAIN for AAAA (dnsmasq with `--local`): the name plans, and resolves
/// in the sandbox for glibc and Python.
fn a_name_whose_aaaa_is_nxdomain_resolves(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let v4only = Behaviour::NxDomainFor(
        RecordType::AAAA,
        Box::new(Behaviour::Addrs {
            addrs: vec![host.v4.parse().unwrap()],
            ttl: 300,
        }),
    );
    let dns = DnsServer::start(Zone::new().with("v4only.c.test", v4only));
    let dir = Dir::new();
    let policy = policy(&dir, "\"v4only.c.test:8080\"", &dns, "");
    let plan = common::sbx(&["plan", "p.yaml"], dir.path());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains(&host.v4),
        "{}",
        text(&plan)
    );
    let out = sbx_sh(
        backend,
        &policy,
        "getent ahostsv4 v4only.c.test | head -1; \
         python3 -c \"import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('v4only.c.test', 8080)}))\"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout.starts_with(&format!("{} ", host.v4))
            && stdout.ends_with(&format!("['{}']\n", host.v4)),
        "{}",
        text(&out)
    );
}

/// The answer's owner name is written as the question was (clients that randomise the case
/// check it); EDNS is answered with EDNS (version 0, 1232 bytes), an unknown version with
/// BADVERS, and a query without EDNS gets none.
fn replies_keep_the_question_case_and_echo_edns(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let dns = DnsServer::start(Zone::new().addrs("case.c.test", &[host.v4.as_str()], 300));
    let dir = Dir::new();
    let policy = policy(&dir, "\"*.c.test:8080\"", &dns, "");
    let out = sbx_sh(
        backend,
        &policy,
        "dig +tries=1 +time=2 +noall +answer Case.C.TEST; echo --; \
         dig +tries=1 +time=2 +noall +comments cAsE.c.test | grep EDNS; echo --; \
         dig +tries=1 +time=2 +noedns +noall +comments case.c.test | grep -c EDNS; echo --; \
         dig +tries=1 +time=2 +edns=1 +noednsneg case.c.test | grep -o 'status: [A-Z]*'",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = stdout.split("--\n").collect();
    assert_eq!(parts.len(), 4, "{}", text(&out));
    assert!(
        parts[0].starts_with("Case.C.TEST.") && parts[0].contains(&host.v4),
        "the owner name as asked: {}",
        text(&out)
    );
    assert!(
        parts[1].contains("; EDNS: version: 0, flags:; udp: 1232"),
        "EDNS echoed: {}",
        text(&out)
    );
    assert_eq!(parts[2], "0\n", "no EDNS without EDNS: {}", text(&out));
    assert_eq!(parts[3], "status: BADVERS\n", "{}", text(&out));
}

/// 60 addresses (under the 64 a name may have): the A answer (about 1,000 bytes) fits a client
/// offering 1232 bytes but not one without EDNS; the AAAA answer (about 1,700) fits no UDP
/// reply. Truncated replies carry TC, and the whole answer comes over TCP, to dig and to glibc.
fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start_with(&["tcp:8080"], Some(BLOCK));
    let v4: Vec<IpAddr> = (1..=60u8).map(|i| IpAddr::from([10, 216, 0, i])).collect();
    // In the test host's IPv6 subnet.
    let v6: Vec<IpAddr> = (1..=60)
        .map(|i| {
            format!("{}{i:x}", host.v6.trim_end_matches('2'))
                .parse()
                .unwrap()
        })
        .collect();
    let zone = Zone::new()
        .with(
            "big4.c.test",
            Behaviour::Addrs {
                addrs: v4,
                ttl: 300,
            },
        )
        .with(
            "big6.c.test",
            Behaviour::Addrs {
                addrs: v6,
                ttl: 300,
            },
        );
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let policy = policy(&dir, "\"*.c.test:8080\"", &dns, "");
    let flags = "grep -o 'flags: [a-z ]*;' | head -1";
    let out = sbx_sh(
        backend,
        &policy,
        &format!(
            "dig +tries=1 +time=2 +ignore +noedns big4.c.test A | {flags}; \
             dig +tries=1 +time=2 +ignore +bufsize=1232 big4.c.test A | {flags}; \
             dig +tries=1 +time=2 +ignore +bufsize=4096 big6.c.test AAAA | {flags}; \
             dig +tries=1 +time=2 +short +bufsize=4096 big6.c.test AAAA | wc -l; \
             dig +tries=1 +time=2 +short +tcp big4.c.test A | wc -l; \
             python3 -c \"import socket; print(len({{a[4][0] for a in socket.getaddrinfo('big6.c.test', 80, socket.AF_INET6, socket.SOCK_STREAM)}}))\""
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "flags: qr tc rd ra;\nflags: qr rd ra;\nflags: qr tc rd ra;\n60\n60\n60\n",
        "{}",
        text(&out)
    );
}

/// Several questions, or none, over UDP and TCP, with EDNS or without: FORMERR, never silence.
fn several_questions_are_refused_with_formerr(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let dns = DnsServer::start(Zone::new().addrs("one.c.test", &[host.v4.as_str()], 300));
    let dir = Dir::new();
    let policy = policy(&dir, "\"*.c.test:8080\"", &dns, "");
    let client = dir.write(
        "questions.py",
        r#"import socket, struct
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
def name(labels): return b''.join(bytes([len(l)]) + l for l in labels) + b'\0'
OPT = b'\0' + struct.pack('>HHIH', 41, 1232, 0, 0)
def msg(names, edns):
    body = b''.join(name(l) + struct.pack('>HH', 1, 1) for l in names)
    return struct.pack('>HHHHHH', 0x1234, 0x0100, len(names), 0, 0, int(edns)) + body + (OPT if edns else b'')
def udp(m):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(m, (ns, 53))
    try: return s.recv(4096)
    except socket.timeout: return None
def tcp(m):
    s = socket.create_connection((ns, 53), timeout=2)
    s.sendall(struct.pack('>H', len(m)) + m)
    try:
        n = struct.unpack('>H', s.recv(2))[0]
        return s.recv(n)
    except (socket.timeout, struct.error): return None
ONE, TWO = [b'one', b'c', b'test'], [b'two', b'c', b'test']
for transport in (udp, tcp):
    for edns in (False, True):
        for names in ([ONE], [ONE, TWO], []):
            r = transport(msg(names, edns))
            print(transport.__name__, edns, len(names), 'none' if r is None else r[3] & 0xf)
"#,
    );
    let out = sbx_sh(backend, &policy, &format!("python3 {}", client.display()));
    let mut want = String::new();
    for transport in ["udp", "tcp"] {
        for edns in ["False", "True"] {
            for (count, rcode) in [(1, 0), (2, 1), (0, 1)] {
                want += &format!("{transport} {edns} {count} {rcode}\n");
            }
        }
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{}", text(&out));
    assert!(
        dns.queries().iter().all(|q| q.name == "one.c.test"),
        "{:?}",
        dns.queries()
    );
}

crate::on_both_backends!(
    the_first_answer_does_not_wait_on_the_start_up_resolution,
    a_name_whose_aaaa_is_nxdomain_resolves,
    replies_keep_the_question_case_and_echo_edns,
    a_large_answer_is_truncated_over_udp_and_whole_over_tcp,
    several_questions_are_refused_with_formerr,
);
