//! `sbx apply`, both backends: start-up and teardown cost of `true` by mode and number of
//! address entries, next to `unshare -n true` and `sbx learn -- true`; how fast a denied TCP connect fails; the cost of
//! one connect() under a 10,000-entry policy; TCP throughput to a test host. Needs root.
//! Run: `cargo bench --bench apply` (or `cargo xtask bench`).

#[path = "../tests/common/dns.rs"]
mod dns;
#[path = "../tests/common/testnet.rs"]
mod testnet;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs per start-up figure: the nftables backend's teardown waits on the kernel for 20-60 ms,
/// so fewer runs give medians that move by several milliseconds between invocations.
const RUNS: usize = 41;
const BACKENDS: [&str; 2] = ["nftables", "ebpf"];
/// This benchmark runs parts of itself inside sandboxes and test hosts; the part is named here.
const ROLE: &str = "SBX_BENCH_ROLE";
const CONNECTS: u32 = 200_000;
const SEND_BYTES: usize = 1 << 30;

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("connect-loop") => return connect_loop(),
        Ok("sink") => return sink(),
        Ok("send") => return send(),
        Ok("dns-latency") => return dns_latency(),
        Ok("dns-burst") => return dns_burst(),
        _ => {}
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the apply benchmark creates namespaces, cgroups and nftables tables: run it as root"
        );
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let sbx = env!("CARGO_BIN_EXE_sbx");
    let none = write(
        dir.path(),
        "none.yaml",
        "version: 1\nnetwork: {mode: none}\n",
    );
    let open = write(
        dir.path(),
        "open.yaml",
        "version: 1\nnetwork: {mode: open}\ndns:\n  servers: [\"127.0.0.1:53\"]\n",
    );
    let dns_only = write(
        dir.path(),
        "dns-only.yaml",
        "version: 1\ndns:\n  servers: [\"127.0.0.1:53\"]\n",
    );
    let unshare = median_ms(|| run(Command::new("unshare").args(["-n", "true"])));
    let mut rows = vec![("unshare -n true".to_string(), unshare)];
    let events = dir.path().join("events.jsonl");
    for backend in BACKENDS {
        let apply_with = |policy: &Path, options: &[&std::ffi::OsStr]| {
            run(Command::new(sbx)
                .args(["apply", "--backend", backend])
                .args(options)
                .arg(policy)
                .args(["--", "true"]))
        };
        let apply = |policy: &Path| apply_with(policy, &[]);
        rows.push((format!("{backend}: mode none"), median_ms(|| apply(&none))));
        // `sbx learn` runs open mode with its DNS service and allowed connections recorded:
        // against `apply` of open mode, what learning itself costs.
        rows.push((format!("{backend}: mode open"), median_ms(|| apply(&open))));
        let learned = dir.path().join("learned.yaml");
        let learn = || {
            run(Command::new(sbx)
                .args(["learn", "--backend", backend, "--base"])
                .arg(&dns_only)
                .arg("-o")
                .arg(&learned)
                .args(["--", "true"]))
        };
        rows.push((
            format!("{backend}: learn (open, DNS served)"),
            median_ms(learn),
        ));
        for entries in [0, 1_000, 10_000] {
            let name = format!("allow{entries}.yaml");
            let policy = write(dir.path(), &name, &allowlist(entries, None));
            let label = format!("{backend}: allowlist, {entries} address entries");
            rows.push((label, median_ms(|| apply(&policy))));
        }
        // What observing adds: audit, and recording allowed connections (sbx learn's options).
        let policy = write(dir.path(), "allow0.yaml", &allowlist(0, None));
        for (label, options) in [
            ("--audit", vec!["--audit".as_ref()]),
            (
                "--events F --events-allowed",
                vec![
                    "--events".as_ref(),
                    events.as_os_str(),
                    "--events-allowed".as_ref(),
                ],
            ),
        ] {
            let label = format!("{backend}: allowlist, 0 entries, {label}");
            rows.push((label, median_ms(|| apply_with(&policy, &options))));
        }
    }
    println!("sbx apply of `true`, median of {RUNS} runs (2 warm-up runs not counted)");
    for (label, ms) in &rows {
        println!("  {label:<45} {ms:>7.1} ms");
    }
    let host = testnet::TestHost::start(&["tcp:8080", "tcp:9090"]);
    for backend in BACKENDS {
        denied_connect(dir.path(), sbx, backend, &host);
    }
    connect_cost(dir.path(), sbx, &host);
    throughput(dir.path(), sbx, &host);
    gate_latency(dir.path(), sbx, &host);
    gate_throughput(dir.path(), sbx, &host);
    http_get(dir.path(), sbx, &host);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A policy of `n` distinct addresses spread over the IPv4 space, so that none merge into a
/// block (the worst case for the number of set elements), and `extra` allowed too.
fn allowlist(n: usize, extra: Option<&str>) -> String {
    let mut text = String::from("version: 1\nnetwork:\n  mode: allowlist\n  allow:");
    if n == 0 && extra.is_none() {
        text.push_str(" []");
    }
    text.push('\n');
    if let Some(extra) = extra {
        text.push_str(&format!("    - \"{extra}\"\n"));
    }
    let mut x: u32 = 0x2545_f491;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        // xorshift: reproducible, spread out; even last octets never neighbour each other.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let [a, b, c, d] = x.to_be_bytes();
        let (first, last) = (11 + a % 89, (d & 0xfe).max(2));
        // Distinct: a repeated entry would only add a warning to the measurement.
        if seen.insert((first, b, c, last)) {
            text.push_str(&format!("    - {first}.{b}.{c}.{last}:443\n"));
        }
    }
    text.push_str("dns:\n  servers: [\"127.0.0.1:53\"]\n");
    text
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?}: {stderr}");
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
fn denied_connect(dir: &Path, sbx: &str, backend: &str, host: &testnet::TestHost) {
    let policy = write(
        dir,
        "denied.yaml",
        &allowlist(0, Some(&format!("{}:8080", host.v4))),
    );
    let probe = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/probe.py");
    let probes: Vec<String> = (0..RUNS).map(|_| format!("tcp:{}:9090", host.v4)).collect();
    let out = Command::new(sbx)
        .args(["apply", "--backend", backend])
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
        "{backend}: denied TCP connect, {RUNS} connects: median {} ms, max {} ms",
        times[RUNS / 2],
        times[RUNS - 1]
    );
}

/// Connects a UDP socket to `SBX_BENCH_TARGET` CONNECTS times: each connect() runs the connect
/// hook, and no packet leaves. Prints nanoseconds per connect.
fn connect_loop() {
    let target: std::net::SocketAddr = std::env::var("SBX_BENCH_TARGET").unwrap().parse().unwrap();
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let started = Instant::now();
    for _ in 0..CONNECTS {
        socket.connect(target).unwrap();
    }
    println!("{}", started.elapsed().as_nanos() / u128::from(CONNECTS));
}

/// Where a measuring role runs: straight, or under `sbx apply POLICY` with a backend.
enum Under<'a> {
    Host,
    Sbx {
        sbx: &'a str,
        backend: &'a str,
        policy: &'a Path,
    },
}

/// The median of `runs` runs of this binary in `role` against `target`; each run prints one
/// number.
fn measure(runs: usize, role: &str, target: &str, under: Under<'_>) -> f64 {
    let me = std::env::current_exe().unwrap();
    let mut command = match under {
        Under::Host => Command::new(&me),
        Under::Sbx {
            sbx,
            backend,
            policy,
        } => {
            let mut command = Command::new(sbx);
            command
                .args(["apply", "--backend", backend])
                .arg(policy)
                .arg("--")
                .arg(&me);
            command
        }
    };
    command.env(ROLE, role).env("SBX_BENCH_TARGET", target);
    let mut values: Vec<f64> = (0..runs)
        .map(|_| {
            let out = command.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    values.sort_by(f64::total_cmp);
    values[runs / 2]
}

fn connect_cost(dir: &Path, sbx: &str, host: &testnet::TestHost) {
    let target = format!("{}:5353", host.v4);
    let policy = write(dir, "connect.yaml", &allowlist(10_000, Some(&host.v4)));
    let plain = measure(5, "connect-loop", &target, Under::Host);
    println!("connect() of a UDP socket, {CONNECTS} times, median of 5 runs:");
    println!("  no sandbox                                    {plain:>7.0} ns");
    for backend in BACKENDS {
        let sandboxed = measure(
            5,
            "connect-loop",
            &target,
            Under::Sbx {
                sbx,
                backend,
                policy: &policy,
            },
        );
        let label = format!("{backend}, 10,000 entries");
        println!(
            "  {label:<45} {sandboxed:>7.0} ns  ({:+.0} ns)",
            sandboxed - plain
        );
    }
}

/// Receives TCP on port 7777 of the test host, connection after connection.
fn sink() {
    let listener = std::net::TcpListener::bind("0.0.0.0:7777").unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    loop {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = std::io::copy(&mut stream, &mut std::io::sink());
    }
}

/// Sends SEND_BYTES to `SBX_BENCH_TARGET`; prints MB/s.
fn send() {
    let target: std::net::SocketAddr = std::env::var("SBX_BENCH_TARGET").unwrap().parse().unwrap();
    let mut stream = std::net::TcpStream::connect(target).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let started = Instant::now();
    for _ in 0..SEND_BYTES / chunk.len() {
        stream.write_all(&chunk).unwrap();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    println!(
        "{:.0}",
        SEND_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6
    );
}

fn throughput(dir: &Path, sbx: &str, host: &testnet::TestHost) {
    let me = std::env::current_exe().unwrap();
    let mut sink = Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .arg(&me)
        .env(ROLE, "sink")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let target = format!("{}:7777", host.v4);
    let policy = write(dir, "throughput.yaml", &allowlist(0, Some(&target)));
    let plain = measure(3, "send", &target, Under::Host);
    println!("TCP throughput to a test host, 1 GiB, median of 3 runs:");
    println!("  no sandbox                                    {plain:>7.0} MB/s");
    for backend in BACKENDS {
        let sandboxed = measure(
            3,
            "send",
            &target,
            Under::Sbx {
                sbx,
                backend,
                policy: &policy,
            },
        );
        let change = (sandboxed / plain - 1.0) * 100.0;
        println!("  {backend:<45} {sandboxed:>7.0} MB/s  ({change:+.1} %)");
    }
    let _ = sink.kill();
    let _ = sink.wait();
}

const QUERIES: usize = 2000;

/// Asks `SBX_BENCH_TARGET` for `bench.test` A, one query after another; prints the median
/// round trip in microseconds.
fn dns_latency() {
    use hickory_resolver::proto::op::{Message, Query};
    use hickory_resolver::proto::rr::{Name, RecordType};
    let target: std::net::SocketAddr = std::env::var("SBX_BENCH_TARGET").unwrap().parse().unwrap();
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 512];
    let mut times: Vec<f64> = (0..QUERIES)
        .map(|i| {
            let mut query = Message::query();
            query.metadata.id = i as u16;
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(
                Name::from_ascii("bench.test.").unwrap(),
                RecordType::A,
            ));
            let bytes = query.to_vec().unwrap();
            let started = Instant::now();
            socket.send_to(&bytes, target).unwrap();
            let (len, _) = socket.recv_from(&mut buf).unwrap();
            let elapsed = started.elapsed().as_secs_f64() * 1e6;
            let reply = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(reply.answers.len(), 1, "{reply:?}");
            elapsed
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("{:.1}", times[QUERIES / 2]);
}

/// A query through sbx's DNS gate (sent to a test host's port 53, where it is redirected), next
/// to the same query straight to the upstream on loopback.
fn gate_latency(dir: &Path, sbx: &str, host: &testnet::TestHost) {
    let upstream =
        dns::DnsServer::start(dns::Zone::new().addrs("bench.test", &[host.v4.as_str()], 300));
    let policy = write(
        dir,
        "gate.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [bench.test]\ndns:\n  servers: [\"{}\"]\n",
            upstream.addr()
        ),
    );
    let direct = measure(3, "dns-latency", &upstream.addr().to_string(), Under::Host);
    println!("a DNS query, {QUERIES} one after another, median of 3 runs (each a median):");
    println!("  straight to the upstream on loopback          {direct:>7.1} µs");
    for backend in BACKENDS {
        let gated = measure(
            3,
            "dns-latency",
            &format!("{}:53", host.v4),
            Under::Sbx {
                sbx,
                backend,
                policy: &policy,
            },
        );
        let label = format!("{backend}: through sbx's DNS gate");
        println!("  {label:<45} {gated:>7.1} µs  ({:+.1} µs)", gated - direct);
    }
}

const BURST: usize = 10_000;
const BURST_SOCKETS: usize = 8;

/// Asks `SBX_BENCH_TARGET` for `bench.test` A, BURST queries from BURST_SOCKETS sockets at
/// once (each socket one query after another); prints queries per second and the p99 round
/// trip in microseconds.
fn dns_burst() {
    use hickory_resolver::proto::op::{Message, Query};
    use hickory_resolver::proto::rr::{Name, RecordType};
    let target: std::net::SocketAddr = std::env::var("SBX_BENCH_TARGET").unwrap().parse().unwrap();
    let started = Instant::now();
    let mut times: Vec<f64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..BURST_SOCKETS)
            .map(|w| {
                scope.spawn(move || {
                    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                    socket
                        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                        .unwrap();
                    let mut buf = [0u8; 512];
                    (0..BURST / BURST_SOCKETS)
                        .map(|i| {
                            let mut query = Message::query();
                            query.metadata.id = (w * 10_000 + i) as u16;
                            query.metadata.recursion_desired = true;
                            query.add_query(Query::query(
                                Name::from_ascii("bench.test.").unwrap(),
                                RecordType::A,
                            ));
                            let bytes = query.to_vec().unwrap();
                            let sent = Instant::now();
                            socket.send_to(&bytes, target).unwrap();
                            let (len, _) = socket.recv_from(&mut buf).unwrap();
                            let elapsed = sent.elapsed().as_secs_f64() * 1e6;
                            let reply = Message::from_vec(&buf[..len]).unwrap();
                            assert_eq!(reply.answers.len(), 1, "{reply:?}");
                            elapsed
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    println!(
        "{:.0} {:.1}",
        times.len() as f64 / seconds,
        times[times.len() * 99 / 100]
    );
}

/// The DNS gate under a burst: queries per second and p99, straight to the upstream and through
/// each backend's gate (median of 3 runs by throughput).
fn gate_throughput(dir: &Path, sbx: &str, host: &testnet::TestHost) {
    let upstream =
        dns::DnsServer::start(dns::Zone::new().addrs("bench.test", &[host.v4.as_str()], 300));
    let policy = write(
        dir,
        "burst.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [bench.test]\ndns:\n  servers: [\"{}\"]\n",
            upstream.addr()
        ),
    );
    let me = std::env::current_exe().unwrap();
    let burst = |target: String, under: Option<&str>| -> (f64, f64) {
        let mut runs: Vec<(f64, f64)> = (0..3)
            .map(|_| {
                let mut command = match under {
                    None => Command::new(&me),
                    Some(backend) => {
                        let mut c = Command::new(sbx);
                        c.args(["apply", "--backend", backend])
                            .arg(&policy)
                            .arg("--")
                            .arg(&me);
                        c
                    }
                };
                let out = command
                    .env(ROLE, "dns-burst")
                    .env("SBX_BENCH_TARGET", &target)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let mut numbers = text.split_whitespace().map(|n| n.parse::<f64>().unwrap());
                (numbers.next().unwrap(), numbers.next().unwrap())
            })
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        runs[1]
    };
    println!(
        "a burst of {BURST} DNS queries from {BURST_SOCKETS} sockets, median of 3 runs: queries/s, p99"
    );
    let (qps, p99) = burst(upstream.addr().to_string(), None);
    println!("  straight to the upstream on loopback          {qps:>7.0} q/s  p99 {p99:>7.1} µs");
    for backend in BACKENDS {
        let (qps, p99) = burst(format!("{}:53", host.v4), Some(backend));
        let label = format!("{backend}: through sbx's DNS gate");
        println!("  {label:<45} {qps:>7.0} q/s  p99 {p99:>7.1} µs");
    }
}

/// A 1 MiB HTTP GET by name from a test host: `sbx apply -- curl` against curl alone (the name
/// given to curl, as no host resolver knows the test host) plus `sbx apply -- true`. What is
/// left is what the sandbox adds to the GET itself: the first DNS answer and the data path.
fn http_get(dir: &Path, sbx: &str, host: &testnet::TestHost) {
    let upstream =
        dns::DnsServer::start(dns::Zone::new().addrs("get.bench.test", &[host.v4.as_str()], 300));
    let policy = write(
        dir,
        "get.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"get.bench.test:8080\"]\ndns:\n  servers: [\"{}\"]\n",
            upstream.addr()
        ),
    );
    let url = "http://get.bench.test:8080/size/1048576";
    let pinned = format!("get.bench.test:8080:{}", host.v4);
    let curl = |command: &mut Command| {
        run(command.args(["curl", "-sSf", "-o", "/dev/null", url]));
    };
    let alone = median_ms(|| {
        run(Command::new("curl").args(["-sSf", "-o", "/dev/null", "--resolve", &pinned, url]))
    });
    println!("a 1 MiB HTTP GET by name from a test host, median of {RUNS} runs:");
    println!("  curl alone (name pinned with --resolve)       {alone:>7.1} ms");
    for backend in BACKENDS {
        let apply = |tail: &[&str]| {
            let mut command = Command::new(sbx);
            command
                .args(["apply", "--backend", backend])
                .arg(&policy)
                .arg("--")
                .args(tail);
            command
        };
        let start_up = median_ms(|| run(&mut apply(&["true"])));
        let get = median_ms(|| curl(&mut apply(&[])));
        println!(
            "  {:<45} {get:>7.1} ms  (curl alone + `-- true` {:.1} ms: {:+.1} ms)",
            format!("{backend}: sbx apply -- curl by name"),
            alone + start_up,
            get - alone - start_up
        );
    }
}
