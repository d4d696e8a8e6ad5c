//! `sbx plan` against a real DNS server started by the test: provenance, normalisation,
//! determinism, every resolution failure mode, truncation and TCP, thousands of names.

mod common;

use common::dns::{Behaviour, DnsServer, Zone};
use common::{Dir, sbx};

fn zone() -> Zone {
    Zone::new()
        .addrs(
            "api.test",
            &["192.0.2.11", "192.0.2.10", "2001:db8::10"],
            300,
        )
        .cname("cdn.test", "edge.cdn.test", 60)
        .cname("edge.cdn.test", "e1.edge.test", 120)
        .addrs("e1.edge.test", &["198.51.100.7"], 30)
        .with(
            "big.test",
            Behaviour::TcpOnly(Box::new(Behaviour::Addrs {
                addrs: vec!["203.0.113.5".parse().unwrap()],
                ttl: 600,
            })),
        )
        .addrs("deny.test", &["192.0.2.99"], 300)
}

fn policy(server: &DnsServer) -> String {
    format!(
        r#"version: 1
name: review-me
description: What a reviewer reads
network:
  mode: allowlist
  allow:
    - api.test:443
    - cdn.test:443
    - "*.svc.test:443"
    - 10.20.0.0/16:5432
    - 10.20.0.0/24:5432
    - host: big.test
      ports: ["8050-8200", 8000-8100]
    - 192.0.2.10:443
    - cidr: 192.0.2.0/25
      ports: [53]
      protocol: udp
  deny:
    - deny.test
    - 10.20.5.0/24
dns:
  servers: ["{}"]
  timeout: 1s
"#,
        server.addr()
    )
}

#[test]
fn the_plan_shows_rules_with_provenance_and_is_byte_identical_on_a_second_run() {
    let server = DnsServer::start(zone());
    let dir = Dir::new();
    dir.write("p.yaml", &policy(&server));

    let first = sbx(&["plan", "p.yaml"], dir.path());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{stderr}");
    let text = String::from_utf8(first.stdout.clone()).unwrap();
    let expected = format!(
        "policy review-me (mode: allowlist)
  What a reviewer reads
  files: p.yaml
  resolved with: {server}

a connection is admitted when an allow set holds it and no deny set does

allow
  tcp/443  192.0.2.10/31, 198.51.100.7, 2001:db8::10
      api.test:443    p.yaml:7:7
      cdn.test:443    p.yaml:8:7
      192.0.2.10:443  p.yaml:14:7
  tcp/5432  10.20.0.0/16
      10.20.0.0/16:5432  p.yaml:10:7
      10.20.0.0/24:5432  p.yaml:11:7
  tcp/8000-8200  203.0.113.5
      {{host: big.test, ports: [\"8000-8200\"]}}  p.yaml:12:7
  udp/53  192.0.2.0/25
      {{cidr: 192.0.2.0/25, ports: [53], protocol: udp}}  p.yaml:15:7

deny
  any/all  10.20.5.0/24, 192.0.2.99
      deny.test     p.yaml:19:7
      10.20.5.0/24  p.yaml:20:7

names decided by sbx's DNS service
  allow *.svc.test  tcp/443  p.yaml:9:7
  allow api.test    tcp/443  p.yaml:7:7
  allow big.test    tcp/8000-8200  p.yaml:12:7
  allow cdn.test    tcp/443  p.yaml:8:7
  deny  deny.test   any/all  p.yaml:19:7

resolved by sbx
  api.test: 192.0.2.10 (ttl 300), 192.0.2.11 (ttl 300), 2001:db8::10 (ttl 300)
  big.test: 203.0.113.5 (ttl 600)
  cdn.test → edge.cdn.test → e1.edge.test: 198.51.100.7 (ttl 30)
  deny.test: 192.0.2.99 (ttl 300)

warnings
  p.yaml:20:7: ipv4-only: every address in `deny` is IPv4, but this policy can reach IPv6 destinations
",
        server = server.addr()
    );
    assert_eq!(text, expected);

    let second = sbx(&["plan", "p.yaml"], dir.path());
    assert_eq!(
        first.stdout, second.stdout,
        "a second run printed other bytes"
    );

    let json1 = sbx(&["plan", "--format", "json", "p.yaml"], dir.path());
    let json2 = sbx(&["plan", "--format", "json", "p.yaml"], dir.path());
    assert_eq!(json1.status.code(), Some(0));
    assert_eq!(
        json1.stdout, json2.stdout,
        "a second JSON run printed other bytes"
    );
    let plan: serde_json::Value = serde_json::from_slice(&json1.stdout).unwrap();
    assert_eq!(plan["mode"], "allowlist");
    let tcp443 = &plan["allow"][0];
    assert_eq!(
        (tcp443["protocol"].as_str(), tcp443["ports"].as_str()),
        (Some("tcp"), Some("443"))
    );
    assert_eq!(tcp443["sources"][1]["entry"], "cdn.test:443");
    assert_eq!(tcp443["sources"][1]["origin"], "p.yaml:8:7");
    assert_eq!(tcp443["sources"][1]["addresses"][0], "198.51.100.7/32");
    let cdn = plan["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cdn.test")
        .unwrap();
    assert_eq!(
        cdn["answer"]["cnames"],
        serde_json::json!(["edge.cdn.test", "e1.edge.test"])
    );
    assert_eq!(cdn["answer"]["addresses"][0]["ttl"], 30);
}

#[test]
fn a_truncated_udp_answer_is_retried_over_tcp() {
    let server = DnsServer::start(zone());
    let out = plan_network(&server, "  mode: allowlist\n  allow: [big.test]\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("big.test: 203.0.113.5 (ttl 600)")
    );
    let queries = server.queries();
    assert!(
        queries.iter().any(|q| q.name == "big.test" && !q.tcp),
        "{queries:?}"
    );
    assert!(
        queries.iter().any(|q| q.name == "big.test" && q.tcp),
        "no TCP retry: {queries:?}"
    );
}

/// `sbx plan` of a policy whose `network:` block is `network`, resolving with `server`.
fn plan_network(server: &DnsServer, network: &str) -> std::process::Output {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n{network}dns:\n  servers: [\"{}\"]\n",
            server.addr()
        ),
    );
    sbx(&["plan", "p.yaml"], dir.path())
}

/// A one-name policy for each failure mode.
fn failing(server: &DnsServer, name: &str, extra: &str) -> (i32, String, String) {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - {name}:443\ndns:\n  servers: [\"{}\"]\n  timeout: 300ms\n  attempts: 1\n{extra}",
            server.addr()
        ),
    );
    let out = sbx(&["plan", "p.yaml"], dir.path());
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn failure_zone() -> Zone {
    Zone::new()
        .with("broken.test", Behaviour::ServFail)
        .with("refused.test", Behaviour::Refused)
        .with("silent.test", Behaviour::Silent)
        .with(
            "empty.test",
            Behaviour::Addrs {
                addrs: vec![],
                ttl: 60,
            },
        )
}

#[test]
fn each_failure_mode_names_the_entry_and_the_cause() {
    let server = DnsServer::start(failure_zone());
    for (name, cause) in [
        ("missing.test", "NXDOMAIN"),
        ("broken.test", "SERVFAIL"),
        ("refused.test", "REFUSED"),
        ("silent.test", "timeout"),
        ("empty.test", "no addresses"),
    ] {
        let (status, stdout, stderr) = failing(&server, name, "");
        assert_eq!(status, 1, "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: a plan was printed: {stdout}");
        assert!(
            stderr.contains(&format!(
                "error[resolve-failed]: cannot resolve `{name}`: {cause}"
            )),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("--> p.yaml:5:7"), "{name}: {stderr}");
    }
}

#[test]
fn with_on_resolve_failure_warn_the_plan_is_produced_with_a_warning() {
    let server = DnsServer::start(failure_zone());
    let (status, stdout, stderr) = failing(&server, "missing.test", "  on_resolve_failure: warn\n");
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stderr.contains("warning[resolve-failed]: cannot resolve `missing.test`: NXDOMAIN"),
        "{stderr}"
    );
    assert!(
        stdout.contains(
            "\nwarnings\n  p.yaml:5:7: resolve-failed: cannot resolve `missing.test`: NXDOMAIN"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  missing.test: NXDOMAIN (the name does not exist)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("allow missing.test  tcp/443"),
        "the name stays with the DNS service: {stdout}"
    );
}

#[test]
fn a_deny_name_that_does_not_resolve_is_no_error() {
    let server = DnsServer::start(Zone::new());
    let out = plan_network(
        &server,
        "  mode: open\n  deny: [metadata.google.internal, fd00:ec2::254]\n",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("metadata.google.internal: NXDOMAIN"),
        "{stdout}"
    );
    assert!(stdout.contains("any/all  fd00:ec2::254\n"), "{stdout}");
}

/// Deny wins for names: the addresses sbx resolved for an allowed name that a deny wildcard
/// covers are in the deny set, on the wildcard's ports, with the wildcard as their provenance.
#[test]
fn a_deny_wildcard_denies_the_addresses_of_the_allowed_names_below_it() {
    let zone = Zone::new()
        .addrs("api.x.test", &["192.0.2.20"], 300)
        .addrs("db.x.test", &["192.0.2.21"], 300)
        .addrs("free.test", &["192.0.2.22"], 300);
    let server = DnsServer::start(zone);
    let out = plan_network(
        &server,
        "  mode: allowlist\n  allow: [api.x.test:443, db.x.test:443, free.test:443]\n  deny: [\"*.x.test:443\"]\n",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let deny = &stdout[stdout.find("\ndeny\n").expect("a deny section")..];
    assert!(deny.contains("tcp/443  192.0.2.20/31\n"), "{stdout}");
    for name in ["api.x.test", "db.x.test"] {
        let line = deny
            .lines()
            .find(|l| l.contains(&format!("*.x.test:443 ({name})")))
            .unwrap_or_else(|| panic!("{name} under the wildcard:\n{stdout}"));
        assert!(line.ends_with("p.yaml:5:10"), "{line}");
    }
}

#[test]
fn localhost_is_loopback_without_asking_a_server() {
    let server = DnsServer::start(Zone::new());
    let out = plan_network(&server, "  mode: allowlist\n  allow: [localhost:5432]\n");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("tcp/5432  127.0.0.1, ::1\n"), "{stdout}");
    assert!(server.queries().is_empty());
}

#[test]
fn a_zone_with_thousands_of_names_resolves_in_one_plan() {
    const NAMES: usize = 3000;
    let mut zone = Zone::new();
    let mut allow = String::new();
    for i in 0..NAMES {
        let name = format!("n{i}.bulk.test");
        let addr = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        zone = zone.addrs(&name, &[addr.as_str()], 300);
        allow.push_str(&format!("    - {name}:443\n"));
    }
    let server = DnsServer::start(zone);
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n{allow}dns:\n  servers: [\"{}\"]\n",
            server.addr()
        ),
    );
    let out = sbx(&["plan", "--format", "json", "p.yaml"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 10.0.0.0 .. 10.0.11.183 merge into a handful of blocks.
    let set = &plan["allow"][0];
    assert_eq!(set["sources"].as_array().unwrap().len(), NAMES);
    assert_eq!(
        set["addresses"],
        serde_json::json!([
            "10.0.0.0/21",
            "10.0.8.0/23",
            "10.0.10.0/24",
            "10.0.11.0/25",
            "10.0.11.128/27",
            "10.0.11.160/28",
            "10.0.11.176/29"
        ])
    );
    assert_eq!(plan["resolved"].as_array().unwrap().len(), NAMES);
}

/// A policy that gives no plan ends with a count, as `sbx check` does, whether it failed to
/// load or to resolve.
#[test]
fn no_plan_ends_with_a_summary_line() {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"bad entry!\"]\n",
    );
    let out = sbx(&["plan", "p.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().last(),
        Some("no plan for p.yaml: 1 error, 0 warnings"),
        "{stderr}"
    );
}
