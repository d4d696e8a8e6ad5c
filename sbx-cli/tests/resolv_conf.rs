//! The command's resolv.conf keeps the host's search list and options, on both backends: a short
//! name that works outside sbx works inside, judged by the DNS gate as the full name the client
//! asks. The host's /etc/resolv.conf is never touched: sbx runs in a private mount namespace of
//! the test's, where a test file is bound over it. Needs root.

mod common;

use common::require_root;

use std::process::{Command, Output};

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::{PROBE, TestHost, exclusive, outcomes};

/// `sbx apply` with `host_resolv_conf` as the host's /etc/resolv.conf (bound over it in a mount
/// namespace of its own, private, so the host's mounts are not changed).
fn apply_with_resolv_conf(
    dir: &Dir,
    host_resolv_conf: &str,
    backend: &str,
    policy: &std::path::Path,
    command: &str,
) -> Output {
    let file = dir.write("host-resolv.conf", host_resolv_conf);
    let target = std::fs::canonicalize("/etc/resolv.conf").unwrap();
    let script = format!(
        "mount --make-rprivate / && mount --bind {} {} && exec {} apply --backend {backend} {} -- sh -c '{command}'",
        file.display(),
        target.display(),
        env!("CARGO_BIN_EXE_sbx"),
        policy.display()
    );
    Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("run unshare")
}

fn a_short_name_resolves_through_the_hosts_search_list(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let dns = DnsServer::start(Zone::new().addrs("pkg.corp.example", &[&host.v4], 300));
    let dir = Dir::new();
    let policy = dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"pkg.corp.example:8080\"]\n\
             dns:\n  servers: [\"{}\"]\n",
            dns.addr()
        ),
    );
    let host_conf = "nameserver 127.0.0.1\nsearch corp.example\noptions ndots:1 timeout:1\n";
    let out = apply_with_resolv_conf(
        &dir,
        host_conf,
        backend,
        &policy,
        &format!("cat /etc/resolv.conf; getent hosts pkg; python3 {PROBE} tcp:pkg:8080"),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("search corp.example"), "{text}");
    assert!(text.contains("options ndots:1 timeout:1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&host.v4) && l.contains("pkg.corp.example")),
        "getent: {text}"
    );
    assert_eq!(
        outcomes(&out).get("tcp:pkg:8080").map(String::as_str),
        Some("ok"),
        "{text}"
    );
    // Judged as the full name the client asked: the gate asked the upstream for that.
    assert!(
        dns.queries().iter().any(|q| q.name == "pkg.corp.example"),
        "{:?}",
        dns.queries()
    );
}

crate::on_both_backends!(a_short_name_resolves_through_the_hosts_search_list);
