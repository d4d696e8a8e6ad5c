//! `sbx explain`: verdicts and the rule that decides them, offline.

mod common;

use common::{Dir, sbx};

const POLICY: &str = "\
version: 1
network:
  mode: allowlist
  allow:
    - \"*.example.com:443\"
    - api.test:443
    - host: mirror.test
      ports: [\"8000-8100\"]
    - 10.20.0.0/16:5432
    - host: ntp.test
      ports: [123]
      protocol: udp
    - localhost:5432
    - admin.test:443
  deny:
    - bad.example.com
    - 10.20.9.0/24
    - admin.test:8443
";

/// Exit code and stdout of `sbx explain policy.yaml DEST`.
fn explain(dir: &Dir, dest: &str) -> (i32, String) {
    let out = sbx(&["explain", "policy.yaml", dest], dir.path());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap(), format!("{stdout}{stderr}"))
}

fn dir() -> Dir {
    let dir = Dir::new();
    dir.write("policy.yaml", POLICY);
    dir
}

#[test]
fn wildcards_match_any_depth_below_never_the_apex() {
    let dir = dir();
    for name in ["a.example.com:443", "a.b.c.Example.COM.:443"] {
        let (code, out) = explain(&dir, name);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("allowed by `*.example.com:443` at policy.yaml:5:7"),
            "{out}"
        );
    }
    for name in [
        "example.com:443",
        "badexample.com:443",
        "example.com.evil:443",
    ] {
        let (code, out) = explain(&dir, name);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("not in the allowlist"), "{out}");
    }
}

#[test]
fn ports_protocols_and_ranges() {
    let dir = dir();
    assert_eq!(explain(&dir, "mirror.test:8000").0, 0);
    assert_eq!(explain(&dir, "mirror.test:8100").0, 0);
    let (code, out) = explain(&dir, "mirror.test:8101");
    assert_eq!(code, 1);
    assert!(out.contains("names it for tcp 8000-8100 only"), "{out}");
    assert_eq!(explain(&dir, "ntp.test:123/udp").0, 0);
    assert_eq!(explain(&dir, "ntp.test:123").0, 1, "a port alone means TCP");
    let (code, out) = explain(&dir, "api.test");
    assert_eq!(code, 1);
    assert!(
        out.contains("partly allowed") && out.contains("allowed: tcp 443"),
        "{out}"
    );
}

#[test]
fn deny_wins_over_allow() {
    let dir = dir();
    // A denied name is refused by the DNS service, on every port.
    let (code, out) = explain(&dir, "bad.example.com:443");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("denied by `bad.example.com` at policy.yaml:16:7"),
        "{out}"
    );
    assert!(
        out.contains("over `*.example.com:443` at policy.yaml:5:7 (deny wins)"),
        "{out}"
    );
    let (code, out) = explain(&dir, "admin.test:443");
    assert_eq!(
        code, 1,
        "a deny entry of the name refuses it on every port: {out}"
    );
    assert!(
        out.contains("refuses a name that a deny entry names"),
        "{out}"
    );
}

#[test]
fn addresses_and_blocks() {
    let dir = dir();
    let (code, out) = explain(&dir, "10.20.1.2:5432");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed by `10.20.0.0/16:5432` at policy.yaml:9:7"),
        "{out}"
    );
    let (code, out) = explain(&dir, "10.20.9.7:5432");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("denied by `10.20.9.0/24` at policy.yaml:17:7"),
        "{out}"
    );
    let (code, out) = explain(&dir, "10.21.0.1:5432");
    assert_eq!(code, 1);
    assert!(out.contains("not in the allowlist"), "{out}");
    // IPv4-mapped addresses are judged as the IPv4 address they are.
    assert_eq!(explain(&dir, "[::ffff:10.20.1.2]:5432").0, 0);
}

#[test]
fn the_hosts_loopback_only_through_an_entry_that_names_it() {
    let dir = dir();
    assert_eq!(explain(&dir, "localhost:5432").0, 0);
    let (code, out) = explain(&dir, "127.0.0.1:5432");
    assert_eq!(
        code, 1,
        "`localhost` is a name; the address needs its own entry: {out}"
    );
    assert!(out.contains("host's loopback"), "{out}");
    dir.write(
        "open.yaml",
        "version: 1\nnetwork:\n  mode: open\n  deny: [192.0.2.1]\n",
    );
    let out = sbx(&["explain", "open.yaml", "0.0.0.0:22"], dir.path());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("judged as 127.0.0.1"), "{text}");
    let out = sbx(&["explain", "open.yaml", "192.0.2.1:443"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let out = sbx(&["explain", "open.yaml", "192.0.2.2:443"], dir.path());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("`mode: open` at open.yaml:3:9"), "{text}");
}

#[test]
fn errors_exit_2() {
    let dir = dir();
    assert_eq!(explain(&dir, "bad_name.test:443").0, 2);
    assert_eq!(explain(&dir, "example.com:99999").0, 2);
    dir.write("broken.yaml", "version: 1\nnetwork:\n  mode: sometimes\n");
    let out = sbx(&["explain", "broken.yaml", "example.com"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("broken.yaml:3:9"), "{stderr}");
}

/// `--resolve`: names judged by the addresses a DNS server started here gives them (on
/// loopback, named by the policy's own `dns.servers`), each verdict against the offline one.
#[test]
fn resolve_judges_a_name_by_its_addresses() {
    use common::dns::{DnsServer, Zone};
    let server = DnsServer::start(
        Zone::new()
            .addrs("api.test", &["10.20.9.5"], 300)
            .addrs("db.test", &["10.20.1.7"], 300)
            .addrs("x.svc.test", &["198.51.100.9"], 300)
            .addrs("bad.test", &["198.51.100.9"], 300)
            .addrs("ok.test", &["192.0.2.20"], 300),
    );
    let dir = Dir::new();
    dir.write(
        "policy.yaml",
        &format!(
            "version: 1
network:
  mode: allowlist
  allow:
    - api.test:443
    - 10.20.0.0/16:5432
    - \"*.svc.test:443\"
    - ok.test:443
  deny:
    - 10.20.9.0/24
    - bad.test
dns:
  servers: [\"{}\"]
  timeout: 500ms
  attempts: 1
",
            server.addr()
        ),
    );
    let both = |dest: &str| {
        let offline = explain(&dir, dest);
        let out = sbx(&["explain", "--resolve", "policy.yaml", dest], dir.path());
        let text = format!(
            "{}{}",
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap()
        );
        (offline, (out.status.code().unwrap(), text))
    };

    // Allowed by name, its address in a denied block: deny wins.
    let ((code, offline), (resolved_code, out)) = both("api.test:443");
    assert_eq!(code, 0, "{offline}");
    assert_eq!(resolved_code, 1, "{out}");
    assert!(
        out.contains("by name: allowed by `api.test:443` at policy.yaml:5:7"),
        "{out}"
    );
    assert!(out.contains("10.20.9.5: denied"), "{out}");
    assert!(
        out.contains("denied by `10.20.9.0/24` at policy.yaml:10:7"),
        "{out}"
    );
    assert!(
        out.contains("over `api.test:443` at policy.yaml:5:7 (deny wins)"),
        "{out}"
    );

    // Not in the allowlist by name, its address in an allowed block: reachable by address.
    let ((code, offline), (resolved_code, out)) = both("db.test:5432");
    assert_eq!(code, 1, "{offline}");
    assert!(offline.contains("not in the allowlist"), "{offline}");
    assert_eq!(resolved_code, 0, "{out}");
    assert!(
        out.contains("by name: not in the allowlist: no allow entry names it (sbx's DNS service refuses the name)"),
        "{out}"
    );
    assert!(
        out.contains("10.20.1.7: allowed\n    allowed by `10.20.0.0/16:5432` at policy.yaml:6:7"),
        "{out}"
    );
    assert!(out.contains("reaches its addresses by address"), "{out}");

    // Under an allowed wildcard, at an address a denied name resolves to as well.
    let ((code, _), (resolved_code, out)) = both("x.svc.test:443");
    assert_eq!(code, 0);
    assert_eq!(resolved_code, 1, "{out}");
    assert!(
        out.contains(
            "denied by `bad.test` at policy.yaml:11:7, as `bad.test` resolves to 198.51.100.9"
        ),
        "{out}"
    );

    // An address is judged with the names that resolve to it.
    let ((code, offline), (resolved_code, out)) = both("192.0.2.20:443");
    assert_eq!(code, 1, "{offline}");
    assert_eq!(resolved_code, 0, "{out}");
    assert!(
        out.contains(
            "allowed by `ok.test:443` at policy.yaml:8:7, as `ok.test` resolves to 192.0.2.20"
        ),
        "{out}"
    );

    // A name without an answer keeps its verdict by name, and says so.
    let ((code, _), (resolved_code, out)) = both("gone.svc.test:443");
    assert_eq!((code, resolved_code), (0, 0), "{out}");
    assert!(
        out.contains("`gone.svc.test` does not resolve now (NXDOMAIN"),
        "{out}"
    );

    // The names were asked of the server the policy names.
    assert!(
        server.queries().iter().any(|q| q.name == "api.test"),
        "{:?}",
        server.queries()
    );
}

/// `--resolve` at an address an allowed name resolves to, under a deny wildcard over that name:
/// denied, as the sandbox denies it (a deny wildcard denies the start-up addresses of the
/// allowed names below it); the same name's address outside the wildcard's ports stays allowed.
#[test]
fn resolve_judges_an_allowed_names_address_under_a_deny_wildcard_denied() {
    use common::dns::{DnsServer, Zone};
    let server = DnsServer::start(Zone::new().addrs("api.x.test", &["192.0.2.30"], 300));
    let dir = Dir::new();
    dir.write(
        "policy.yaml",
        &format!(
            "version: 1
network:
  mode: allowlist
  allow:
    - host: api.x.test
      ports: [443, 8443]
  deny:
    - \"*.x.test:443\"
dns:
  servers: [\"{}\"]
  timeout: 500ms
  attempts: 1
",
            server.addr()
        ),
    );
    let explain_resolved = |dest: &str| {
        let out = sbx(&["explain", "--resolve", "policy.yaml", dest], dir.path());
        let text = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
        (out.status.code().unwrap(), text)
    };
    let (code, out) = explain_resolved("192.0.2.30:443");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`*.x.test:443` at policy.yaml:8:7"), "{out}");
    let (code, out) = explain_resolved("192.0.2.30:8443");
    assert_eq!(code, 0, "{out}");
}
