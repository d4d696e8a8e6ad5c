//! `sbx apply` of `true`: start-up and teardown cost by mode and number of address entries, next
//! to `unshare -n true`; and how fast a denied TCP connect fails. Needs root.
//! Run: `cargo bench --bench apply` (or `cargo xtask bench`).

#[path = "../tests/common/testnet.rs"]
mod testnet;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 21;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the apply benchmark creates namespaces and nftables tables: run it as root");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let sbx = env!("CARGO_BIN_EXE_sbx");
    let none = write(
        dir.path(),
        "none.yaml",
        "version: 1\nnetwork: {mode: none}\n",
    );
    let mut rows = vec![
        (
            "unshare -n true".to_string(),
            median_ms(|| run(Command::new("unshare").args(["-n", "true"]))),
        ),
        (
            "sbx apply, mode none".to_string(),
            median_ms(|| {
                run(Command::new(sbx)
                    .arg("apply")
                    .arg(&none)
                    .args(["--", "true"]))
            }),
        ),
    ];
    for entries in [0, 1_000, 10_000] {
        let policy = write(
            dir.path(),
            &format!("allow{entries}.yaml"),
            &allowlist(entries),
        );
        let label = format!("sbx apply, allowlist, {entries} address entries");
        rows.push((
            label,
            median_ms(|| {
                run(Command::new(sbx)
                    .arg("apply")
                    .arg(&policy)
                    .args(["--", "true"]))
            }),
        ));
    }
    println!("sbx apply of `true`, median of {RUNS} runs (2 warm-up runs not counted)");
    for (label, ms) in &rows {
        println!("  {label:<45} {ms:>7.1} ms");
    }
    denied_connect(dir.path(), sbx);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A policy of `n` distinct addresses spread over the IPv4 space, so that none merge into a
/// block (the worst case for the number of set elements).
fn allowlist(n: usize) -> String {
    let mut text = String::from("version: 1\nnetwork:\n  mode: allowlist\n  allow:");
    if n == 0 {
        text.push_str(" []");
    }
    text.push('\n');
    let mut x: u32 = 0x2545_f491;
    for _ in 0..n {
        // xorshift: reproducible, spread out; even last octets never neighbour each other.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let [a, b, c, d] = x.to_be_bytes();
        text.push_str(&format!(
            "    - {}.{b}.{c}.{}:443\n",
            11 + a % 89,
            (d & 0xfe).max(2)
        ));
    }
    text.push_str("dns:\n  servers: [\"127.0.0.1:53\"]\n");
    text
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

/// A denied connect to a live test host: refused at once, not left to time out.
fn denied_connect(dir: &Path, sbx: &str) {
    let host = testnet::TestHost::start(&["tcp:8080", "tcp:9090"]);
    let policy = write(
        dir,
        "denied.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"{}:8080\"]\ndns:\n  servers: [\"127.0.0.1:53\"]\n",
            host.v4
        ),
    );
    let probe = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/probe.py");
    let probes: Vec<String> = (0..RUNS).map(|_| format!("tcp:{}:9090", host.v4)).collect();
    let out = Command::new(sbx)
        .arg("apply")
        .arg(&policy)
        .args(["--", "python3", probe])
        .args(&probes)
        .output()
        .unwrap();
    let mut times: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            assert_eq!(fields[3], "denied", "{l}");
            fields[4].parse().unwrap()
        })
        .collect();
    assert_eq!(times.len(), RUNS);
    times.sort_unstable();
    println!(
        "denied TCP connect, {RUNS} connects: median {} ms, max {} ms",
        times[RUNS / 2],
        times[RUNS - 1]
    );
}
