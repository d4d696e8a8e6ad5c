//! `sbx plan` of 10,000 names against a local DNS server that answers every query after 20 ms.
//! Target: under 2 s wall and under 64 MiB peak memory. Run: `cargo bench --bench plan`.
//!
//! For comparison it also resolves names one after another, as tools that call getaddrinfo in a
//! loop do, on a sample, and extrapolates to 10,000 names.

#[path = "../tests/common/dns.rs"]
mod dns;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dns::{DnsServer, Zone};

const NAMES: usize = 10_000;
const DELAY: Duration = Duration::from_millis(20);
const RUNS: usize = 5;
const SEQUENTIAL_SAMPLE: usize = 50;

fn main() {
    if std::env::var_os(SHIM).is_some() {
        return measure_child();
    }
    let mut zone = Zone::new();
    let mut allow = String::new();
    for i in 0..NAMES {
        let name = format!("n{i}.bench.test");
        let v4 = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        let v6 = format!("fd5b:be::{i:x}");
        zone = zone.addrs(&name, &[v4.as_str(), v6.as_str()], 300);
        allow.push_str(&format!("    - {name}:443\n"));
    }
    let server = DnsServer::start_with_delay(zone, DELAY);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bench.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n{allow}dns:\n  servers: [\"{}\"]\n  timeout: 2s\n",
            server.addr()
        ),
    )
    .unwrap();

    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..RUNS {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(SHIM, "1")
            .arg(env!("CARGO_BIN_EXE_sbx"))
            .args(["plan", "--format", "json"])
            .arg(&policy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        let measured: Vec<f64> = stderr
            .lines()
            .last()
            .unwrap()
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        walls.push(measured[0]);
        cpus.push(measured[1]);
        peaks.push(measured[2]);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["resolved"].as_array().unwrap().len(), NAMES);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (wall_min, wall_max) = (
        walls.iter().copied().fold(f64::MAX, f64::min),
        walls.iter().copied().fold(0.0, f64::max),
    );

    let sequential = sequential_sample(&server);
    let per_name = sequential / SEQUENTIAL_SAMPLE as u32;

    println!("sbx plan, {NAMES} names (A + AAAA each), server delay {DELAY:?}, {RUNS} runs");
    println!(
        "  wall: median {:.3} s (min {wall_min:.3} s, max {wall_max:.3} s)",
        median(&mut walls)
    );
    println!("  CPU time of sbx: median {:.3} s", median(&mut cpus));
    println!(
        "  peak memory (max RSS of the sbx process): median {:.1} MiB",
        median(&mut peaks) / 1024.0
    );
    println!(
        "one name after another: {per_name:?} per name over {SEQUENTIAL_SAMPLE} names, so {:.0} s for {NAMES}",
        (per_name * NAMES as u32).as_secs_f64()
    );
}

/// Resolves a sample of the names strictly one after another, with sbx's own resolver.
fn sequential_sample(server: &DnsServer) -> Duration {
    let dns = sbx::policy::Dns {
        servers: vec![sbx::policy::DnsServer::Addr(server.addr())],
        ..Default::default()
    };
    let resolver = Arc::new(sbx::resolve::Resolver::new(&dns).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..SEQUENTIAL_SAMPLE {
            // getaddrinfo asks A and AAAA together too; the loop is over names.
            resolver.resolve(&format!("n{i}.bench.test")).await.unwrap();
        }
    });
    started.elapsed()
}

/// Set in the environment of the shim that runs and measures one sbx process.
const SHIM: &str = "SBX_BENCH_MEASURE";

/// Runs the command in argv, passes its stdout through, and prints `wall_s cpu_s maxrss_kib` as
/// the last line of stderr. It runs as a separate small process because Linux counts the memory
/// of the process that spawned a program into that program's maxrss (the high-water mark of the
/// address space replaced by exec), and this benchmark's own process holds a 10,000-name zone.
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which reports the rusage that std's wait does not"
)]
fn measure_child() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let started = Instant::now();
    let child = Command::new(&args[0])
        .args(&args[1..])
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 on our own child, writing a full rusage into the pointer it is given.
    let usage = unsafe {
        assert_eq!(
            libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()),
            child.id() as i32
        );
        usage.assume_init()
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    assert_eq!(status, 0, "sbx failed");
    eprintln!(
        "{wall} {} {}",
        cpu(usage.ru_utime) + cpu(usage.ru_stime),
        usage.ru_maxrss
    );
}
