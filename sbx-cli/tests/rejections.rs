//! Every rejection that docs/policy.md (and the v1 contract) lists, each in its own test, through
//! the real `sbx check`: exit code 1, and a message that names the file, line, column, the
//! offending value and the reason, in both output formats.

mod common;

use common::{Dir, check_human, check_json, errors};

/// Checks `policy` as `p.yaml` and expects exactly one error, `code`, at `line:column`, whose
/// message mentions `value`.
fn rejects(policy: &str, code: &str, line: u64, column: u64, value: &str) {
    let dir = Dir::new();
    dir.write("p.yaml", policy);

    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!(status, 1, "{findings:#?}");
    let errs = errors(&findings);
    assert_eq!(errs.len(), 1, "expected one error: {findings:#?}");
    let e = errs[0];
    assert_eq!(e["file"], "p.yaml", "{e:#}");
    assert_eq!(e["code"], code, "{e:#}");
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(line), Some(column)),
        "{e:#}"
    );
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(value),
        "message does not name `{value}`: {message}"
    );

    let (status, text) = check_human(dir.path(), &["p.yaml"]);
    assert_eq!(status, 1);
    assert!(
        text.contains(&format!("error[{code}]: {message}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("--> p.yaml:{line}:{column}")),
        "{text}"
    );
}

/// A policy whose only allow entry is `entry`, written at line 5, column 7.
fn allow(entry: &str) -> String {
    format!("version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - {entry}\n")
}

#[test]
fn empty_entry() {
    rejects(&allow("\"\""), "empty-entry", 5, 7, "empty entry");
}

#[test]
fn null_entry() {
    rejects(&allow(""), "empty-entry", 5, 7, "empty entry in `allow`");
}

#[test]
fn url_scheme() {
    rejects(
        &allow("https://example.com"),
        "url-scheme",
        5,
        7,
        "https://example.com",
    );
}

#[test]
fn path() {
    rejects(&allow("example.com/api"), "path-in-entry", 5, 7, "/api");
}

#[test]
fn query() {
    rejects(&allow("example.com?x=1"), "path-in-entry", 5, 7, "?x=1");
}

#[test]
fn fragment() {
    rejects(&allow("\"example.com#top\""), "path-in-entry", 5, 7, "#top");
}

#[test]
fn port_zero() {
    rejects(&allow("example.com:0"), "invalid-port", 5, 7, "port 0");
}

#[test]
fn port_above_65535() {
    rejects(
        &allow("example.com:65536"),
        "invalid-port",
        5,
        7,
        "port 65536",
    );
}

#[test]
fn long_form_port_out_of_range() {
    let p = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - host: example.com\n      ports: [443, 99999]\n";
    rejects(p, "invalid-port", 6, 20, "99999");
}

#[test]
fn reversed_port_range() {
    let p = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - host: example.com\n      ports: [\"9000-8000\"]\n";
    rejects(p, "reversed-port-range", 6, 15, "9000-8000");
}

#[test]
fn unbracketed_ipv6_with_port() {
    rejects(
        &allow("\"2001:db8:0:0:0:0:1:2:8443\""),
        "ipv6-port-unbracketed",
        5,
        7,
        "2001:db8:0:0:0:0:1:2:8443",
    );
}

#[test]
fn unbracketed_ipv6_cidr_with_port() {
    rejects(
        &allow("\"2001:db8::/32:443\""),
        "ipv6-port-unbracketed",
        5,
        7,
        "2001:db8::/32:443",
    );
}

#[test]
fn host_name_with_bad_character() {
    rejects(
        &allow("bad_name.example.com"),
        "invalid-host",
        5,
        7,
        "bad_name.example.com",
    );
}

#[test]
fn host_label_starting_with_dash() {
    rejects(&allow("-x.example.com"), "invalid-host", 5, 7, "-x");
}

#[test]
fn host_label_ending_with_dash() {
    rejects(&allow("x-.example.com"), "invalid-host", 5, 7, "x-");
}

#[test]
fn host_label_longer_than_63() {
    let label = "a".repeat(64);
    rejects(
        &allow(&format!("{label}.example.com")),
        "invalid-host",
        5,
        7,
        &label,
    );
}

#[test]
fn host_name_longer_than_253() {
    let name = vec!["a".repeat(50); 6].join(".");
    rejects(&allow(&name), "invalid-host", 5, 7, "limit is 253");
}

#[test]
fn host_name_with_empty_label() {
    rejects(
        &allow("a..example.com"),
        "invalid-host",
        5,
        7,
        "a..example.com",
    );
}

#[test]
fn wildcard_inside_a_label() {
    rejects(&allow("\"a*.b.com\""), "invalid-wildcard", 5, 7, "a*.b.com");
}

#[test]
fn two_wildcards() {
    rejects(&allow("\"*.*.com\""), "invalid-wildcard", 5, 7, "*.*.com");
}

#[test]
fn wildcard_over_a_single_label() {
    rejects(&allow("\"*.com\""), "invalid-wildcard", 5, 7, "*.com");
}

#[test]
fn wildcard_not_first() {
    rejects(
        &allow("\"api.*.example.com\""),
        "invalid-wildcard",
        5,
        7,
        "api.*.example.com",
    );
}

#[test]
fn cidr_with_host_bits_suggests_the_network() {
    let dir = Dir::new();
    dir.write("p.yaml", &allow("10.0.0.1/8"));
    let (_, findings) = check_json(dir.path(), &["p.yaml"]);
    let help = errors(&findings)[0]["help"].as_str().unwrap();
    assert!(help.contains("`10.0.0.0/8`"), "{findings:#?}");
    rejects(&allow("10.0.0.1/8"), "cidr-host-bits", 5, 7, "10.0.0.1/8");
}

#[test]
fn ipv6_cidr_with_host_bits() {
    rejects(
        &allow("2001:db8::1/32"),
        "cidr-host-bits",
        5,
        7,
        "2001:db8::1/32",
    );
}

#[test]
fn unknown_top_level_key() {
    rejects(
        "version: 1\nnetwrok:\n  mode: none\n",
        "unknown-key",
        2,
        1,
        "netwrok",
    );
}

#[test]
fn unknown_network_key_suggests_the_right_one() {
    let p = "version: 1\nnetwork:\n  mode: allowlist\n  alow:\n    - example.com\n";
    rejects(p, "unknown-key", 4, 3, "alow");
    let dir = Dir::new();
    dir.write("p.yaml", p);
    let (_, findings) = check_json(dir.path(), &["p.yaml"]);
    let e = errors(&findings)[0];
    assert_eq!(e["help"], "did you mean `allow`?");
}

#[test]
fn unknown_dns_key() {
    rejects(
        "version: 1\nnetwork: {mode: none}\ndns:\n  server: [system]\n",
        "unknown-key",
        4,
        3,
        "server",
    );
}

#[test]
fn unknown_entry_key() {
    let p = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - host: example.com\n      port: [443]\n";
    rejects(p, "unknown-key", 6, 7, "port");
}

#[test]
fn allow_in_none_mode() {
    let p = "version: 1\nnetwork:\n  mode: none\n  allow:\n    - example.com\n";
    rejects(p, "allow-without-allowlist", 5, 7, "mode: none");
}

#[test]
fn allow_in_open_mode() {
    let p = "version: 1\nnetwork:\n  mode: open\n  allow:\n    - example.com\n";
    rejects(p, "allow-without-allowlist", 5, 7, "mode: open");
}

#[test]
fn missing_version() {
    rejects(
        "network:\n  mode: none\n",
        "missing-version",
        1,
        1,
        "version",
    );
}

#[test]
fn unsupported_version() {
    rejects(
        "version: 2\nnetwork:\n  mode: none\n",
        "unsupported-version",
        1,
        10,
        "version 2",
    );
}

#[test]
fn missing_mode() {
    let dir = Dir::new();
    dir.write("p.yaml", "version: 1\nnetwork:\n  deny: [192.0.2.1]\n");
    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!(status, 1);
    let errs = errors(&findings);
    assert_eq!(errs.len(), 1, "{findings:#?}");
    assert_eq!(errs[0]["code"], "missing-mode");
    assert_eq!(errs[0]["file"], "p.yaml");
}

#[test]
fn invalid_mode() {
    rejects(
        "version: 1\nnetwork:\n  mode: allow\n",
        "invalid-mode",
        3,
        9,
        "allow",
    );
}

#[test]
fn long_form_with_two_destinations() {
    let p = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - {host: example.com, ip: 192.0.2.1}\n";
    rejects(p, "conflicting-target", 5, 7, "host and ip");
}

#[test]
fn long_form_without_destination() {
    let p = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - {ports: [443]}\n";
    rejects(p, "missing-target", 5, 7, "no destination");
}

#[test]
fn duplicate_key() {
    rejects(
        "version: 1\nnetwork:\n  mode: none\nnetwork:\n  mode: open\n",
        "duplicate-key",
        4,
        1,
        "network",
    );
}

#[test]
fn yaml_syntax_error() {
    rejects(
        "version: 1\nnetwork: [mode: none\n",
        "yaml-syntax",
        3,
        1,
        "invalid YAML",
    );
}

#[test]
fn extends_missing_file_shows_the_chain() {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        "version: 1\nextends: [base/gone.yaml]\nnetwork: {mode: none}\n",
    );
    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!(status, 1);
    let e = errors(&findings)[0];
    assert_eq!(
        (e["code"].as_str(), e["line"].as_u64(), e["column"].as_u64()),
        (Some("extends-missing"), Some(2), Some(11))
    );
    assert!(
        e["message"].as_str().unwrap().contains("base/gone.yaml"),
        "{e:#}"
    );
    assert!(
        e["notes"][0].as_str().unwrap().contains("`p.yaml`"),
        "{e:#}"
    );
}

#[test]
fn extends_cycle_shows_the_chain() {
    let dir = Dir::new();
    dir.write(
        "a.yaml",
        "version: 1\nextends: [b.yaml]\nnetwork: {mode: none}\n",
    );
    dir.write("b.yaml", "version: 1\nextends: [c.yaml]\n");
    dir.write("c.yaml", "version: 1\nextends: [a.yaml]\n");
    let (status, findings) = check_json(dir.path(), &["a.yaml"]);
    assert_eq!(status, 1);
    let errs = errors(&findings);
    assert_eq!(errs.len(), 1, "{findings:#?}");
    let e = errs[0];
    assert_eq!(
        (e["code"].as_str(), e["file"].as_str(), e["line"].as_u64()),
        (Some("extends-cycle"), Some("c.yaml"), Some(2))
    );
    assert_eq!(
        e["message"],
        "`extends` cycle: `a.yaml` → `b.yaml` → `c.yaml` → `a.yaml`"
    );
}

#[test]
fn bad_dns_settings() {
    rejects(
        "version: 1\nnetwork: {mode: none}\ndns:\n  servers: [\"dns.example.com\"]\n",
        "invalid-dns-server",
        4,
        13,
        "dns.example.com",
    );
    rejects(
        "version: 1\nnetwork: {mode: none}\ndns:\n  timeout: 2\n",
        "invalid-duration",
        4,
        12,
        "2",
    );
    rejects(
        "version: 1\nnetwork: {mode: none}\ndns:\n  attempts: 0\n",
        "invalid-attempts",
        4,
        13,
        "0",
    );
    rejects(
        "version: 1\nnetwork: {mode: none}\ndns:\n  on_resolve_failure: ignore\n",
        "invalid-on-resolve-failure",
        4,
        23,
        "ignore",
    );
}

/// A wildcard in `deny` is enforced by the DNS service, which `mode: open` does not run: refused
/// rather than ignored. Names and addresses in `deny` stay valid there.
#[test]
fn deny_wildcard_in_open_mode() {
    rejects(
        "version: 1\nnetwork:\n  mode: open\n  deny:\n    - 10.0.0.0/8\n    - \"*.evil.test\"\n    - evil.test\n",
        "deny-wildcard-in-open",
        6,
        7,
        "*.evil.test",
    );
}
