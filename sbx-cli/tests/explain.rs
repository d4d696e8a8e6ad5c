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
