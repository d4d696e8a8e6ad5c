//! The eBPF backend's escapes found in the security review, each a regression test: the real sbx
//! binary, the real kernel, host services on the host's loopback, test hosts in namespaces of
//! their own. Each runs as root and as `--user nobody` inside the sandbox, in every mode it
//! applies to, and checks the host is left as it was. Needs root.
//!
//! 1. A bind elsewhere (127.0.0.2:P, [::]:P) made the host's 127.0.0.1:P "the command's own", and
//!    so did a bind of 127.0.0.2:53 for DNS, which then passed sbx's DNS service by.
//! 2. The unspecified addresses and IPv4-mapped loopback reached host loopback services.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::{exclusive, host_state, outcomes};

const ESCAPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/escape.py");
const TESTSRV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/testsrv.py");

/// Who the command runs as: root (sbx's default when run by root) and an unprivileged user.
const USERS: [Option<&str>; 2] = [None, Some("nobody")];

/// Every mode; the allowlist names nothing the tests reach.
const MODES: [&str; 3] = [
    "mode: none",
    "mode: allowlist\n  allow: [\"192.0.2.10:443\"]",
    "mode: open",
];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests create namespaces, cgroups and host services: run them as root"
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

/// `testsrv.py` on the host itself (not in a namespace): what a host loopback service is.
struct HostService(Child);

impl HostService {
    fn start(addrs: &str, services: &[&str]) -> HostService {
        let mut child = Command::new("python3")
            .arg(TESTSRV)
            .arg(addrs)
            .args(services)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the host service did not start");
        HostService(child)
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sbx apply --backend BACKEND [--user USER] POLICY -- COMMAND…`.
fn sbx(backend: &str, user: Option<&str>, policy: &Path, command: &[&str]) -> Command {
    let mut sbx = Command::new(env!("CARGO_BIN_EXE_sbx"));
    sbx.args(["apply", "--backend", backend]);
    if let Some(user) = user {
        sbx.args(["--user", user]);
    }
    sbx.arg(policy).arg("--").args(command);
    sbx
}

/// Runs `escape.py` with `actions` in an eBPF sandbox, and compares each outcome with the one
/// expected; returns the differences.
fn run_escape(
    policy: &Path,
    user: Option<&str>,
    label: &str,
    expected: &[(String, &str)],
) -> Vec<String> {
    let mut command = vec!["python3", ESCAPE];
    command.extend(expected.iter().map(|(action, _)| action.as_str()));
    let out: Output = sbx("ebpf", user, policy, &command).output().unwrap();
    let got = outcomes(&out);
    expected
        .iter()
        .filter_map(|(action, want)| {
            let actual = got.get(action).map_or("(no result)", String::as_str);
            (actual != *want).then(|| {
                format!(
                    "{label}: {action}: expected {want}, got {actual}\n  stdout: {}\n  stderr: {}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
        })
        .collect()
}

/// Escape 1: the command binds P on another loopback address (127.0.0.2, or [::] IPv6 only),
/// then connects to the host's 127.0.0.1:P; binds 127.0.0.2:53 and asks 127.0.0.1:53; shares a
/// UDP port with the host's socket through SO_REUSEADDR. None of it reaches the host's services;
/// the command's own server still answers.
#[test]
fn a_bind_elsewhere_does_not_make_a_host_loopback_port_the_commands_own() {
    require_root();
    let _guard = exclusive();
    let _host = HostService::start(
        "127.0.0.1",
        &["tcp:17211", "tcp:17212", "udp:17211", "udp:17213"],
    );
    // The host's resolver on 127.0.0.1:53; it must never hear of the command's name.
    let resolver = DnsServer::start_at(
        Zone::new().addrs("leak.test", &["10.213.250.2"], 300),
        "127.0.0.1:53".parse().unwrap(),
    );
    let upstream = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let before = host_state();
    let mut failures = Vec::new();
    for mode in MODES {
        for user in USERS {
            let policy = write_policy(&dir, mode, &upstream);
            // Port 53 is privileged: an unprivileged command cannot bind it at all.
            let bind53 = if user.is_some() { "denied" } else { "ok" };
            let dns = if mode.contains("allowlist") {
                "refused" // sbx's DNS service answered
            } else {
                "denied"
            };
            let expected: Vec<(String, &str)> = [
                ("serve-tcp:127.0.0.1:17301", "ok"),
                ("bind-tcp:127.0.0.2:17211", "ok"),
                ("bind-tcp6only:[::]:17212", "ok"),
                ("bind-udp:127.0.0.2:17211", "ok"),
                // Shares the port with the host's socket, which is more specific: the kernel
                // delivers 127.0.0.1 to the host's.
                ("bind-udp-reuse:0.0.0.0:17213", "ok"),
                // Would share the host's very address and port: refused.
                ("bind-udp-reuse:127.0.0.1:17213", "denied"),
                ("bind-udp:127.0.0.2:53", bind53),
                ("bind-tcp:127.0.0.2:53", bind53),
                ("tcp:127.0.0.1:17301", "ok"),
                ("tcp:127.0.0.1:17211", "denied"),
                ("tcp:127.0.0.1:17212", "denied"),
                ("udp:127.0.0.1:17211", "denied"),
                ("udp:127.0.0.1:17213", "denied"),
                ("dns:127.0.0.1:53", dns),
            ]
            .into_iter()
            .map(|(action, want)| (action.to_string(), want))
            .collect();
            let label = format!("{mode:?} as {}", user.unwrap_or("root"));
            failures.extend(run_escape(&policy, user, &label, &expected));
            if host_state() != before {
                failures.push(format!("{label}: the host changed"));
            }
        }
    }
    let leaked: Vec<String> = resolver.queries().into_iter().map(|q| q.name).collect();
    if !leaked.is_empty() {
        failures.push(format!("the host's resolver was asked {leaked:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Escape 2: 0.0.0.0, ::, ::ffff:0.0.0.0 and the IPv4-mapped loopback addresses lead to the
/// host's loopback; none of them reaches a host loopback service, in any mode. The command's own
/// servers stay reachable through them.
#[test]
fn unspecified_and_mapped_addresses_reach_no_host_loopback_service() {
    require_root();
    let _guard = exclusive();
    let _loopback_only = HostService::start("127.0.0.1,::1", &["tcp:17221", "udp:17221"]);
    // A host service on every address: its loopback side is the host's loopback too.
    let _everywhere = HostService::start("0.0.0.0", &["tcp:17222"]);
    let upstream = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let before = host_state();
    let mut failures = Vec::new();
    for mode in MODES {
        for user in USERS {
            let policy = write_policy(&dir, mode, &upstream);
            let mut expected: Vec<(String, &str)> = [
                "serve-tcp:127.0.0.1:17302",
                "serve-tcp:[::1]:17303",
                "serve-udp:127.0.0.1:17304",
                "tcp:0.0.0.0:17302",
                "tcp:[::ffff:127.0.0.1]:17302",
                "tcp:[::ffff:0.0.0.0]:17302",
                "tcp:[::]:17303",
                "udp:0.0.0.0:17304",
            ]
            .into_iter()
            .map(|action| (action.to_string(), "ok"))
            .collect();
            expected.extend(
                [
                    "tcp:0.0.0.0:17221",
                    "tcp:[::]:17221",
                    "tcp:[::ffff:0.0.0.0]:17221",
                    "tcp:[::ffff:127.0.0.1]:17221",
                    "tcp:127.0.0.1:17221",
                    "tcp:[::1]:17221",
                    "tcp:0.0.0.0:17222",
                    "tcp:127.1.2.3:17222",
                    "tcp:[::ffff:127.1.2.3]:17222",
                    "udp:0.0.0.0:17221",
                    "udp:[::]:17221",
                    "udp:[::ffff:0.0.0.0]:17221",
                    "udp:[::ffff:127.0.0.1]:17221",
                ]
                .into_iter()
                .map(|action| (action.to_string(), "denied")),
            );
            let label = format!("{mode:?} as {}", user.unwrap_or("root"));
            failures.extend(run_escape(&policy, user, &label, &expected));
            if host_state() != before {
                failures.push(format!("{label}: the host changed"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
