//! Source routing: a socket option (IPv4 loose source routing, an IPv6 segment routing header)
//! makes the kernel address a packet to a first hop while the connect and send hooks are shown
//! the final destination. A sandbox allowed one destination must not reach any other address
//! that way, as root or not, on either backend. Needs root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::testnet::{TestHost, exclusive, host_state};
use common::{Dir, Ready, require_root};

const SOURCE_ROUTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/source_route.py");
const SNIFF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/sniff.py");

/// What arrives at a test host's link addressed to it, TCP or UDP, whatever its stack does then.
fn sniffer(host: &TestHost) -> Ready {
    let iface = format!("{}s", host.netns.replace('-', ""));
    Ready::start(
        Command::new("ip")
            .args(["netns", "exec", &host.netns, "python3", SNIFF, &iface])
            .args([&host.v4, &host.v6]),
        "sniffer",
    )
}

fn source_routing_reaches_no_other_address(backend: &str) {
    require_root();
    let _host = exclusive();
    let before = host_state();
    let allowed = TestHost::start(&["tcp:8080", "udp:5353"]);
    let hop = TestHost::start(&[]);
    let dir = Dir::new();
    for user in [None, Some("nobody")] {
        let policy = dir.write(
            "p.yaml",
            &format!(
                "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - {}\n    - \"[{}]\"\n",
                allowed.v4, allowed.v6
            ),
        );
        let sniffer = sniffer(&hop);
        let mut sbx = Command::new(env!("CARGO_BIN_EXE_sbx"));
        sbx.args(["apply", "--backend", backend]);
        if let Some(user) = user {
            sbx.args(["--user", user]);
        }
        let events = dir.path().join("events.jsonl");
        let out = sbx
            .arg("--events")
            .arg(&events)
            .arg(&policy)
            .args(["--", "python3", SOURCE_ROUTE, &allowed.v4, &allowed.v6])
            .args(["8080", &hop.v4, &hop.v6])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stdout.lines().count(),
            4,
            "as {user:?}: every attempt reports\n{stdout}\n{stderr}"
        );
        // Packets in flight when the command ends still arrive.
        std::thread::sleep(Duration::from_millis(300));
        let seen = sniffer.stop();
        assert!(
            seen.is_empty(),
            "as {user:?}: source-routed packets reached an address the policy does not allow:\n\
             {seen}\nthe command printed:\n{stdout}\n{stderr}"
        );
        // Refused, and reported as sent to the hop: where the packet was going.
        let events = std::fs::read_to_string(&events).unwrap();
        assert!(
            events.contains(&format!("\"destination\":\"{}\"", hop.v6)),
            "as {user:?}: the denial names the hop {}:\n{events}",
            hop.v6
        );
    }
    drop((allowed, hop));
    assert_eq!(host_state(), before, "the host is left as it was");
}

on_both_backends!(source_routing_reaches_no_other_address);
