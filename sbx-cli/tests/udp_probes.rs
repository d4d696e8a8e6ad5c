//! UDP connects that send nothing, and the traffic the kernel sends by itself: neither is the
//! command's denied traffic. Real clients (glibc's getaddrinfo, curl) and a connected-UDP client
//! against test hosts, on both backends. Needs root.
//!
//! 1. glibc and Go connect a UDP socket to every candidate address of a name to choose among
//!    them (RFC 6724), and send nothing: a run that succeeds reports no denial.
//! 2. Such a connect to a denied destination succeeds, as on a real network, but nothing sent on
//!    the socket arrives there, and each send is reported; reconnecting it to an allowed
//!    destination works.
//! 3. The kernel's own IPv6 router solicitations from a sandbox's link are not the command's
//!    denials.

mod common;

use common::require_root;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::dns::{DnsServer, Zone};
use common::testnet::{TestHost, exclusive, host_state};
use common::{Dir, Ready};

const CONNECTED_UDP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/connected_udp.py");

fn write_policy(dir: &Dir, network: &str, dns: &DnsServer) -> PathBuf {
    dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  {network}\ndns:\n  servers: [\"{}\"]\n",
            dns.addr()
        ),
    )
}

/// `sbx apply --backend BACKEND --events EVENTS POLICY -- COMMAND…`, as root.
fn apply(backend: &str, events: &Path, policy: &Path, command: &[&str]) -> Output {
    apply_as(backend, None, events, policy, command)
}

/// The same, the command run as `user` when given.
fn apply_as(
    backend: &str,
    user: Option<&str>,
    events: &Path,
    policy: &Path,
    command: &[&str],
) -> Output {
    let mut sbx = Command::new(env!("CARGO_BIN_EXE_sbx"));
    sbx.args(["apply", "--backend", backend]);
    if let Some(user) = user {
        sbx.args(["--user", user]);
    }
    sbx.arg("--events")
        .arg(events)
        .arg(policy)
        .arg("--")
        .args(command)
        .current_dir("/")
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

/// A UDP server in a test host's namespace that prints every datagram it receives on `port` of
/// the host's addresses: what reached the destination, whatever the client was told.
fn recorder(host: &TestHost, port: u16) -> Ready {
    let script = r#"
import socket, sys, threading
def serve(addr):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[3])))
    while True:
        data, peer = s.recvfrom(4096)
        print(repr(data), peer, flush=True)
for addr in sys.argv[1:3]:
    threading.Thread(target=serve, args=(addr,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;
    Ready::start(
        Command::new("ip")
            .args(["netns", "exec", &host.netns, "python3", "-c", script])
            .args([&host.v4, &host.v6, &port.to_string()]),
        "recorder",
    )
}

/// glibc's getaddrinfo (python's, `getent ahosts`) and curl, for a name with an IPv4 and an
/// IPv6 address, under a policy that allows it over TCP only: the address-selection probes
/// (UDP connects to port 8080, and to port 0 for `getent`) are no denials, the run succeeds, and
/// nothing is reported.
fn address_selection_probes_are_not_denials(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let dns = DnsServer::start(Zone::new().addrs("svc.test", &[&host.v4, &host.v6], 300));
    let dir = Dir::new();
    let policy = write_policy(
        &dir,
        "mode: allowlist\n  allow:\n    - {host: svc.test, ports: [8080], protocol: tcp}",
        &dns,
    );
    let events_path = dir.path().join("events.jsonl");
    let before = host_state();
    let script = "import socket\n\
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n\
        \x20   socket.getaddrinfo('svc.test', 8080, type=kind)\n\
        print('resolved')";
    let command = format!(
        "getent ahosts svc.test >/dev/null && python3 -c \"{script}\" && \
         curl -sS --max-time 5 http://svc.test:8080/"
    );
    let out = apply(backend, &events_path, &policy, &["sh", "-c", &command]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("resolved") && stdout.contains("port 8080"),
        "{backend}: the run failed: {out:?}"
    );
    assert!(
        !stderr.contains("denied"),
        "{backend}: a probe was reported as a denial:\n{stderr}"
    );
    assert_eq!(events(&events_path), [], "{backend}: events were written");
    assert_eq!(host_state(), before, "{backend}: the host changed");
}

/// A `git clone` over HTTP by name (git and curl resolve with glibc, probe every address, and
/// open several connections) from a test host serving a repository: the clone succeeds, and
/// nothing is reported as denied.
fn a_git_clone_by_name_reports_no_denial(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["tcp:8080"]);
    let dns = DnsServer::start(Zone::new().addrs("git.test", &[&host.v4, &host.v6], 300));
    let dir = Dir::new();
    // A bare repository with one commit, served as files ("dumb" HTTP) from the test host.
    let served = dir.path().join("served");
    let git = |args: &[&str], cwd: &Path| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&served).unwrap();
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README"), "cloned through sbx\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "one"], &work);
    git(
        &["clone", "-q", "--bare", work.to_str().unwrap(), "r.git"],
        &served,
    );
    git(&["update-server-info"], &served.join("r.git"));
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.netns,
            "python3",
            "-m",
            "http.server",
            "8081",
        ])
        .arg("--directory")
        .arg(&served)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let policy = write_policy(
        &dir,
        "mode: allowlist\n  allow:\n    - {host: git.test, ports: [8081], protocol: tcp}",
        &dns,
    );
    let events_path = dir.path().join("events.jsonl");
    let clone = dir.path().join("clone");
    let command = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do curl -sf -o /dev/null http://git.test:8081/ && break; \
         sleep 0.2; done; git clone -q http://git.test:8081/r.git {} && cat {}/README",
        clone.display(),
        clone.display()
    );
    let out = apply(backend, &events_path, &policy, &["sh", "-c", &command]);
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("cloned through sbx"),
        "{backend}: the clone failed: {out:?}"
    );
    assert!(
        !stderr.contains("denied"),
        "{backend}: a denial was reported:\n{stderr}"
    );
    assert_eq!(events(&events_path), [], "{backend}: events were written");
}

/// A UDP socket connected to a denied port of a test host (IPv4, IPv6, IPv4-mapped): the
/// connect succeeds, nothing sent on the socket arrives, each send is reported; reconnected to
/// the allowed port it works; `sendto` on a connected socket is judged by its address. A thread
/// reconnecting the socket between the two ports while another sends gets nothing through.
fn a_connected_udp_socket_sends_nothing_to_a_denied_destination(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start(&["udp:5353"]);
    let recorder = recorder(&host, 5354);
    let dns = DnsServer::start(Zone::new());
    let dir = Dir::new();
    let network = format!(
        "mode: allowlist\n  allow:\n    - {{ip: \"{}\", ports: [5353], protocol: udp}}\n    - {{ip: \"{}\", ports: [5353], protocol: udp}}",
        host.v4, host.v6
    );
    let policy = write_policy(&dir, &network, &dns);
    let before = host_state();
    let mut failures = Vec::new();
    let mut all_events = Vec::new();
    // As root and as an ordinary user: the verdicts must not depend on who sends.
    for (user, addr) in [None, Some("nobody")]
        .into_iter()
        .flat_map(|u| [(u, &host.v4), (u, &host.v6)])
    {
        if backend == "nftables" && user.is_some() && addr == &host.v4 {
            // nftables tells the client of a refused send with an ICMP error, which the kernel
            // rate-limits per destination (icmp_ratelimit: a burst of 6, one a second after);
            // the sandbox has the same address in every run, so the first pass used them up.
            std::thread::sleep(std::time::Duration::from_secs(7));
        }
        let events_path = dir.path().join("events.jsonl");
        let _ = std::fs::remove_file(&events_path);
        let out = apply_as(
            backend,
            user,
            &events_path,
            &policy,
            &["python3", CONNECTED_UDP, addr, "5353", "5354"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let outcome = |attempt: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{attempt} ")))
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or("(no result)")
                .to_string()
        };
        // Where nftables lets a sendto out, the host refuses it: the ICMP error finds no
        // socket connected there, so only the recorder tells.
        let sendto_denied = if backend == "ebpf" { "denied" } else { "ok" };
        let mut expected = vec![
            ("connect-denied", "ok"),
            ("send-denied", "denied"),
            ("reconnect-allowed", "ok"),
            ("sendto-allowed", "ok"),
            ("sendto-denied", sendto_denied),
            ("race", "ok"),
        ];
        if !addr.contains(':') {
            expected.extend([
                ("mapped-connect-denied", "ok"),
                ("mapped-send-denied", "denied"),
                ("mapped-reconnect-allowed", "ok"),
                ("mapped-sendto-allowed", "ok"),
                ("mapped-sendto-denied", sendto_denied),
            ]);
        }
        for (attempt, want) in expected {
            let got = outcome(attempt);
            if got != want {
                failures.push(format!(
                    "{backend} {user:?} {addr}: {attempt}: expected {want}, got {got}\n  stdout: {}\n  stderr: {}",
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let summary = String::from_utf8_lossy(&out.stderr);
        let denied = if addr.contains(':') {
            format!("[{addr}]:5354/udp")
        } else {
            format!("{addr}:5354/udp")
        };
        if !summary.contains(&denied) {
            failures.push(format!(
                "{backend} {user:?} {addr}: {denied} is not reported:\n{summary}"
            ));
        }
        all_events.extend(events(&events_path));
    }
    let received = recorder.stop();
    if received.contains("leak") {
        failures.push(format!(
            "{backend}: datagrams reached the denied port:\n{received}"
        ));
    }
    // Each refused send is reported, never a connect; all to the denied port.
    let wrong: Vec<_> = all_events
        .iter()
        .filter(|(_, port, protocol, hook)| {
            *port != 5354 || *protocol != 17 || hook.starts_with("connect")
        })
        .collect();
    if !wrong.is_empty() || all_events.is_empty() {
        failures.push(format!(
            "{backend}: {} events, these wrong: {wrong:?}",
            all_events.len()
        ));
    }
    if host_state() != before {
        failures.push(format!("{backend}: the host changed"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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

crate::on_both_backends!(
    address_selection_probes_are_not_denials,
    a_git_clone_by_name_reports_no_denial,
    a_connected_udp_socket_sends_nothing_to_a_denied_destination,
    what_the_kernel_sends_by_itself_is_not_a_denial,
);
