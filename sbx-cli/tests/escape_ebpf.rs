//! The eBPF backend's escapes found in the security review, each a regression test: the real sbx
//! binary, the real kernel, host services on the host's loopback, test hosts in namespaces of
//! their own. Each runs as root and as `--user nobody` inside the sandbox, in every mode it
//! applies to, and checks the host is left as it was. Needs root.
//!
//! 1. A bind elsewhere (127.0.0.2:P, [::]:P) made the host's 127.0.0.1:P "the command's own", and
//!    so did a bind of 127.0.0.2:53 for DNS, which then passed sbx's DNS service by.
//! 2. The unspecified addresses and IPv4-mapped loopback reached host loopback services.
//! 3. A peer the policy does not allow connected in to a port the command listens on (both
//!    backends, one test body: the same verdicts).

mod common;

use common::require_root;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::dns::{DnsServer, Zone};
use common::testnet::{TestHost, exclusive, host_state, outcomes};
use common::{Dir, Ready};

const ESCAPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/escape.py");
const INBOUND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/inbound.py");
const TESTSRV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/testsrv.py");

/// Who the command runs as: root (sbx's default when run by root) and an unprivileged user.
const USERS: [Option<&str>; 2] = [None, Some("nobody")];

/// Every mode; the allowlist names nothing the tests reach.
const MODES: [&str; 3] = [
    "mode: none",
    "mode: allowlist\n  allow: [\"192.0.2.10:443\"]",
    "mode: open",
];

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
fn host_service(addrs: &str, services: &[&str]) -> Ready {
    Ready::start(
        Command::new("python3")
            .arg(TESTSRV)
            .arg(addrs)
            .args(services),
        "host service",
    )
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
    let _host = host_service(
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
    let _loopback_only = host_service("127.0.0.1,::1", &["tcp:17221", "udp:17221"]);
    // A host service on every address: its loopback side is the host's loopback too.
    let _everywhere = host_service("0.0.0.0", &["tcp:17222"]);
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

const TCP_PORT: u16 = 17400;
const UDP_PORT: u16 = 17401;

/// From the test host's namespace: connect to TARGET's TCP port and send `peer`, send a `peer`
/// datagram to its UDP port; print `peer-tcp OUTCOME` and `peer-udp OUTCOME` (ok only when the
/// command answered).
const PEER: &str = r#"
import socket, sys
target, tcp, udp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def attempt(action):
    try:
        return action()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error-%d" % e.errno
def by_tcp():
    with socket.create_connection((target, tcp), timeout=1) as s:
        s.sendall(b"peer")
        return "ok" if s.recv(100) == b"reply" else "no-reply"
def by_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(b"peer", (target, udp))
        return "ok" if s.recv(100) == b"reply" else "no-reply"
print("peer-tcp", attempt(by_tcp), flush=True)
print("peer-udp", attempt(by_udp), flush=True)
"#;

/// From the host itself (a host process, outside any sandbox), over its loopback.
fn host_attempts() -> (String, String) {
    let tcp = (|| -> std::io::Result<String> {
        let at: SocketAddr = ([127, 0, 0, 1], TCP_PORT).into();
        let mut stream = TcpStream::connect_timeout(&at, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"host")?;
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    })()
    .unwrap_or_else(|e| format!("failed: {e}"));
    let udp = (|| -> std::io::Result<String> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        socket.send_to(b"host", ("127.0.0.1", UDP_PORT))?;
        let mut reply = [0u8; 16];
        let n = socket.recv(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
    })()
    .unwrap_or_else(|e| format!("failed: {e}"));
    (tcp, udp)
}

/// Escape 3 (both backends): the command listens on TCP and UDP on every address; a test host
/// connects in and sends, allowed by the policy or not, and a host process tries the same over
/// the host's loopback. Nothing reaches the command and nothing comes back, in every mode, as the
/// nftables backend has it (it admits no new inbound connection, only replies); the command's
/// talk with itself over loopback, and the replies to what it is allowed to send out, still work.
fn a_peer_connecting_in_is_refused(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080", "udp:5353"]);
    let gateway = format!("{}.1", host.v4.rsplit_once('.').unwrap().0);
    let upstream = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let before = host_state();
    let allowed_peer = format!("mode: allowlist\n  allow: [\"{}\"]", host.v4);
    let cases = [
        (MODES[0], false),
        (MODES[1], false),
        (allowed_peer.as_str(), true),
        (MODES[2], true),
    ];
    let mut failures = Vec::new();
    for (mode, reaches_peer) in cases {
        for user in USERS {
            let label = format!("{backend}, {mode:?} as {}", user.unwrap_or("root"));
            let policy = write_policy(&dir, mode, &upstream);
            let work = tempfile::tempdir().unwrap();
            std::fs::set_permissions(
                work.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )
            .unwrap();
            let folder = work.path().to_str().unwrap();
            let (tcp_port, udp_port) = (TCP_PORT.to_string(), UDP_PORT.to_string());
            let probes = [
                format!("tcp:{}:8080", host.v4),
                format!("udp:{}:5353", host.v4),
            ];
            let mut command = vec!["python3", INBOUND, folder, &tcp_port, &udp_port];
            if reaches_peer {
                command.extend(probes.iter().map(String::as_str));
            }
            let child = sbx(backend, user, &policy, &command)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let ready = work.path().join("ready");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ready.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let addresses = std::fs::read_to_string(&ready).unwrap_or_default();
            // Where the command listens, as the test host reaches it: the host's end of the test
            // host's link (eBPF: the command is in the host's network stack), or the sandbox's
            // own address (nftables; none in mode none, where the host's end is tried).
            let target = match backend {
                "ebpf" => gateway.clone(),
                _ => addresses
                    .split_whitespace()
                    .next()
                    .unwrap_or(&gateway)
                    .to_string(),
            };
            let peer = Command::new("ip")
                .args(["netns", "exec", &host.netns, "python3", "-c", PEER])
                .args([&target, &tcp_port, &udp_port])
                .output()
                .unwrap();
            let peer = String::from_utf8_lossy(&peer.stdout).into_owned();
            let (host_tcp, host_udp) = host_attempts();
            std::fs::write(work.path().join("go"), "").unwrap();
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut check = |ok: bool, what: &str| {
                if !ok {
                    failures.push(format!(
                        "{label}: {what}\n  command: {text}  peer: {peer}  host: tcp {host_tcp}, udp {host_udp}\n  stderr: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            };
            check(ready.exists(), "the command did not start");
            check(text.contains("own-tcp ok"), "own TCP over loopback");
            check(text.contains("own-udp ok"), "own UDP over loopback");
            if reaches_peer {
                for probe in &probes {
                    check(
                        text.contains(&format!("probe {probe} ok")),
                        "a reply to what the command sent",
                    );
                }
            }
            check(
                peer.contains("peer-tcp ") && !peer.contains("peer-tcp ok"),
                "the peer connected in",
            );
            check(
                peer.contains("peer-udp ") && !peer.contains("peer-udp ok"),
                "the peer's datagram was answered",
            );
            check(
                host_tcp.starts_with("failed"),
                "a host process connected in",
            );
            check(
                host_udp.starts_with("failed"),
                "a host process was answered",
            );
            check(
                !text.contains(" peer") && !text.contains(" host"),
                "the command received from outside",
            );
            let after = host_state();
            check(
                after == before,
                &format!("the host changed:\nbefore {before:?}\nafter  {after:?}"),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

crate::on_both_backends!(a_peer_connecting_in_is_refused);
