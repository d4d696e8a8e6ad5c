//! Traffic that is not the command's denied traffic, on both backends. Needs root.
//!
//! The kernel's own IPv6 router solicitations from a sandbox's link are not the command's
//! denials.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::exclusive;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests create namespaces and test hosts: run them as root"
    );
}

fn write_policy(dir: &Dir, network: &str, dns: &DnsServer) -> PathBuf {
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  {network}\ndns:\n  servers: [\"{}\"]\n",
            dns.addr()
        ),
    )
}

/// `sbx apply --backend BACKEND --events EVENTS POLICY -- COMMAND…`.
fn apply(backend: &str, events: &Path, policy: &Path, command: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend, "--events"])
        .arg(events)
        .arg(policy)
        .arg("--")
        .args(command)
        .output()
        .expect("run sbx apply")
}

/// `(destination, port, protocol, hook)` of each event written to `events`.
fn events(events: &Path) -> Vec<(String, u64, u64, String)> {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| {
            (
                e["destination"].as_str().unwrap_or("-").to_string(),
                e["port"].as_u64().unwrap_or(0),
                e["protocol"].as_u64().unwrap_or(0),
                e["hook"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

/// A command that sends nothing, long enough for the kernel to solicit routers on the
/// sandbox's link (after up to 1 s, then every 4 s) and to announce its multicast groups: no
/// denial is reported, and the run leaves no trace of those packets in the events.
fn what_the_kernel_sends_by_itself_is_not_a_denial(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dns = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let policy = write_policy(&dir, "mode: allowlist\n  allow: [\"192.0.2.10:443\"]", &dns);
    let events_path = dir.path().join("events.jsonl");
    let out = apply(backend, &events_path, &policy, &["sleep", "6"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{backend}: {out:?}");
    assert!(!stderr.contains("denied"), "{backend}: {stderr}");
    assert_eq!(events(&events_path), [], "{backend}");
}

crate::on_both_backends!(what_the_kernel_sends_by_itself_is_not_a_denial);
