//! The DNS gate as real clients see it (dig, glibc's getaddrinfo through getent and Python), on
//! both backends. Real DNS servers started by the tests, on loopback, answering with addresses
//! of test hosts (never connected to: only the answers matter here). Needs root.

mod common;

use std::process::{Command, Output};

use common::Dir;
use common::dns::{Behaviour, DnsServer, Zone};
use common::testnet::{TestHost, exclusive};
use hickory_resolver::proto::rr::RecordType;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the DNS client tests need root (CI has it)"
    );
}

fn policy(dir: &Dir, allow: &str, dns: &DnsServer, extra_dns: &str) -> std::path::PathBuf {
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [{allow}]\ndns:\n  servers: [\"{}\"]\n{extra_dns}",
            dns.addr()
        ),
    )
}

fn sbx_sh(backend: &str, policy: &std::path::Path, script: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend])
        .arg(policy)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

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

crate::on_both_backends!(
    the_first_answer_does_not_wait_on_the_start_up_resolution,
    a_name_whose_aaaa_is_nxdomain_resolves,
);
