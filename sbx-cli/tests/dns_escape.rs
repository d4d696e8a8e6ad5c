//! The DNS gate judges a question by its labels as they came on the wire, by the same rule as the
//! policy's names, and asks the upstream exactly the name it judged. On both backends, with the
//! real sbx, a DNS server the test starts (which records every query it receives) and real
//! clients inside the sandbox: dig, and Python for messages dig cannot write. Needs root.

mod common;

use common::require_root;

use std::process::{Command, Output};

use common::Dir;
use common::dns::{DnsServer, LoggedQuery, Zone};
use common::testnet::{TestHost, exclusive};

/// Allows `*.allowed.test` and two exact names, one in punycode; every allowed name answers with
/// the test host's address.
struct Setup {
    host: TestHost,
    dns: DnsServer,
    dir: Dir,
    policy: std::path::PathBuf,
}

fn setup() -> Setup {
    let host = TestHost::start(&["tcp:8080"]);
    let v4 = host.v4.clone();
    let zone = [
        "a.allowed.test",
        "x.evil.allowed.test",
        "exact.test",
        "xn--bcher-kva.test",
        "xn--caf-dma.allowed.test",
    ]
    .iter()
    .fold(Zone::new(), |zone, name| {
        zone.addrs(name, &[v4.as_str()], 300)
    });
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    let policy = dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - \"*.allowed.test:8080\"\n    \
             - exact.test:8080\n    - xn--bcher-kva.test:8080\ndns:\n  servers: [\"{}\"]\n",
            dns.addr()
        ),
    );
    Setup {
        host,
        dns,
        dir,
        policy,
    }
}

/// Runs `script` in the sandbox; its output and the events file's lines.
fn sbx_sh(backend: &str, setup: &Setup, script: &str) -> (Output, String) {
    let events = setup.dir.path().join("events.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend, "--events"])
        .arg(&events)
        .arg(&setup.policy)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (out, std::fs::read_to_string(&events).unwrap())
}

/// `label: STATUS ANSWERS…` for each dig, one line each.
fn digs(names: &[(&str, &str)]) -> String {
    names
        .iter()
        .map(|(label, args)| {
            format!(
                "echo \"{label}: $(dig +tries=1 +time=2 {args} | grep -o 'status: [A-Z]*' | cut -d' ' -f2) $(dig +short +tries=1 +time=2 {args} | tr '\\n' ' ')\"\n"
            )
        })
        .collect()
}

fn results(out: &Output) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Whether the upstream was ever asked a name with a label for which `bad` holds.
fn upstream_saw(queries: &[LoggedQuery], bad: impl Fn(&[u8]) -> bool) -> Vec<String> {
    queries
        .iter()
        .filter(|q| q.labels.iter().any(|l| bad(l)))
        .map(|q| q.name.clone())
        .collect()
}

/// `x.evil\.allowed.test` looks like a name below `*.allowed.test` as text, but its labels are
/// `x`, `evil.allowed`, `test`: refused, and never asked upstream. Case and a trailing dot make
/// no difference to an allowed name; a label that is not a host-name label is refused.
fn names_are_judged_by_their_wire_labels(backend: &str) {
    require_root();
    let _guard = exclusive();
    let setup = setup();
    let v4 = setup.host.v4.clone();
    let script = digs(&[
        ("escaped-dot", "'x.evil\\.allowed.test'"),
        ("upper", "A.ALLOWED.TEST"),
        ("trailing-dot", "a.allowed.test."),
        ("upper-exact", "EXACT.Test."),
        ("punycode-exact", "xn--bcher-kva.test"),
        ("punycode-below", "XN--CAF-DMA.allowed.test"),
        ("underscore", "_acme-challenge.allowed.test"),
        ("star", "'*.allowed.test'"),
        ("nul", "'a\\000b.allowed.test'"),
        ("hyphen", "-q -a.allowed.test"),
        ("chaos", "-c CH a.allowed.test"),
    ]);
    let (out, events) = sbx_sh(backend, &setup, &script);
    let got = results(&out);
    let answered = format!("NOERROR {v4}");
    for (label, want) in [
        ("escaped-dot", "REFUSED"),
        ("upper", answered.as_str()),
        ("trailing-dot", answered.as_str()),
        ("upper-exact", answered.as_str()),
        ("punycode-exact", answered.as_str()),
        ("punycode-below", answered.as_str()),
        ("underscore", "REFUSED"),
        ("star", "REFUSED"),
        ("nul", "REFUSED"),
        ("hyphen", "REFUSED"),
        ("chaos", "REFUSED"),
    ] {
        assert_eq!(
            got.get(label).map(String::as_str),
            Some(want),
            "{label}: {got:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let queries = setup.dns.queries();
    let leaked = upstream_saw(&queries, |l| {
        !l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') || l.starts_with(b"-")
    });
    assert!(leaked.is_empty(), "the upstream was asked {leaked:?}");
    // Asked exactly the names judged: in lower case.
    let upper = upstream_saw(&queries, |l| l.iter().any(u8::is_ascii_uppercase));
    assert!(upper.is_empty(), "the upstream was asked {upper:?}");
    assert!(
        queries.iter().any(|q| q.name == "xn--caf-dma.allowed.test"),
        "{queries:?}"
    );
    // Refused names are reported with every byte visible (JSON doubles the `\`).
    assert!(
        events.contains(r#""name":"x.evil\\.allowed.test""#),
        "{events}"
    );
}

/// Messages dig does not send: several questions, a class other than IN, compression tricks, a
/// response, another opcode, the longest name and one label too many.
fn odd_messages_ask_nothing_upstream(backend: &str) {
    require_root();
    let _guard = exclusive();
    let setup = setup();
    let client = setup.dir.write(
        "raw.py",
        r#"import socket, struct
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
def name(labels): return b''.join(bytes([len(l)]) + l for l in labels) + b'\0'
def msg(questions, flags=0x0100):
    body = b''.join(name(l) + struct.pack('>HH', t, c) for l, t, c in questions)
    return struct.pack('>HHHHHH', 0x1234, flags, len(questions), 0, 0, 0) + body
def ask(m):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(m, (ns, 53))
    try: return str(s.recv(4096)[3] & 0xf)
    except socket.timeout: return 'none'
A = [b'a', b'allowed', b'test']
print('plain:', ask(msg([(A, 1, 1)])))
print('two-questions:', ask(msg([(A, 1, 1), ([b'two', b'attacker', b'test'], 1, 1)])))
print('dot-in-label:', ask(msg([([b'x', b'evil.allowed', b'test'], 1, 1)])))
print('nul:', ask(msg([([b'n\0ul', b'allowed', b'test'], 1, 1)])))
print('escape-bytes:', ask(msg([([b'\x1b[31m', b'allowed', b'test'], 1, 1)])))
print('root:', ask(msg([([], 1, 1)])))
print('chaos:', ask(msg([(A, 1, 3)])))
print('any-class:', ask(msg([(A, 1, 255)])))
print('response:', ask(msg([(A, 1, 1)], flags=0x8100)))
print('notify:', ask(msg([(A, 1, 1)], flags=0x2000)))
loop = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\xc0\x0c' + struct.pack('>HH', 1, 1)
print('pointer-loop:', ask(loop))
fwd = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\x01a\xc0\x14' + struct.pack('>HH', 1, 1) + name([b'allowed', b'test'])
print('pointer-forward:', ask(fwd))
longest = [b'a' * 63, b'b' * 63, b'c' * 63, b'd' * 48, b'allowed', b'test']
print('longest:', ask(msg([(longest, 1, 1)])))
print('too-long:', ask(msg([([b'e'] + longest, 1, 1)])))
"#,
    );
    let (out, events) = sbx_sh(backend, &setup, &format!("python3 {}", client.display()));
    let got = results(&out);
    for (label, want) in [
        ("plain", "0"),
        ("two-questions", "1"),
        ("dot-in-label", "5"),
        ("nul", "5"),
        ("escape-bytes", "5"),
        ("root", "5"),
        ("chaos", "5"),
        ("any-class", "5"),
        ("response", "none"),
        ("notify", "4"),
        ("pointer-loop", "none"),
        ("pointer-forward", "none"),
        // Not in the zone: the upstream was asked, and said NXDOMAIN.
        ("longest", "3"),
        ("too-long", "none"),
    ] {
        assert_eq!(
            got.get(label).map(String::as_str),
            Some(want),
            "{label}: {got:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let queries = setup.dns.queries();
    let leaked = upstream_saw(&queries, |l| {
        !l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') || l == b"attacker" || l == b"e"
    });
    assert!(leaked.is_empty(), "the upstream was asked {leaked:?}");
    assert_eq!(
        queries
            .iter()
            .filter(|q| q.name == "a.allowed.test")
            .count(),
        1,
        "only the plain question of a.allowed.test is asked: {queries:?}"
    );
    assert!(
        queries.iter().any(|q| q.name.starts_with("aaaaaaaa")),
        "the longest name is asked: {queries:?}"
    );
    // Control bytes never reach the terminal or the events: reported as \DDD.
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(!summary.contains('\x1b'), "{summary}");
    assert!(
        events.contains(r#""name":"\\027[31m.allowed.test""#),
        "{events}"
    );
}

crate::on_both_backends!(
    names_are_judged_by_their_wire_labels,
    odd_messages_ask_nothing_upstream,
);
