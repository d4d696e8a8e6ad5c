//! `sbx learn` end to end, on both backends: a script reaches two names on different TCP ports,
//! one name over UDP, one address by itself and a loopback server of its own; the learned policy
//! allows exactly those, checks clean, runs the same script under `sbx apply`, and denies what
//! the script did not use; `--wildcards` proposals work under `sbx apply`. Real DNS server and
//! test host started by the tests, real sbx. Needs root.

mod common;

use common::require_root;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::{PROBE, TestHost, apply_probes, exclusive, host_state, outcomes};

/// Routed to the test host: one address per name, and one reached by address only.
const BLOCK: &str = "10.215.0.0/24";
const WEB: &str = "10.215.0.1";
const API: &str = "10.215.0.2";
const TIME: &str = "10.215.0.3";
const LITERAL: &str = "10.215.0.9";

/// The script's probes: two names on different TCP ports, a name over UDP, an address.
fn probes() -> Vec<String> {
    vec![
        "tcp:web.learn.test:8080".into(),
        "tcp:api.learn.test:8081".into(),
        "udp:time.learn.test:5353".into(),
        format!("tcp:{LITERAL}:8082"),
    ]
}

/// Its own loopback server, asked once: never written.
const LOOPBACK: &str = "import socket\n\
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
c = socket.create_connection(s.getsockname()); a, _ = s.accept()\n\
c.sendall(b'x'); assert a.recv(1) == b'x'\n\
print('loopback ok')\n";

/// The script: the probes (each must succeed), its loopback server, a name it only asks about,
/// then exit with `status`.
fn script(status: u8) -> String {
    format!(
        "python3 {PROBE} {} && python3 -c \"{LOOPBACK}\" && getent hosts unused.learn.test; \
         exit {status}",
        probes().join(" ")
    )
}

struct Setup {
    host: TestHost,
    dns: DnsServer,
    dir: Dir,
}

fn setup() -> Setup {
    let host = TestHost::start_with(&["tcp:8080,tcp:8081,tcp:8082,udp:5353"], Some(BLOCK));
    let zone = Zone::new()
        .addrs("web.learn.test", &[WEB], 300)
        .addrs("api.learn.test", &[API], 300)
        .addrs("time.learn.test", &[TIME], 300)
        .addrs("unused.learn.test", &["10.215.0.4"], 300);
    let dns = DnsServer::start(zone);
    Setup {
        host,
        dns,
        dir: Dir::new(),
    }
}

/// A base of DNS settings only (no mode), as a team's shared base file would be.
fn base(setup: &Setup, network: &str) -> PathBuf {
    setup.dir.write(
        "base.yaml",
        &format!(
            "version: 1\n{network}dns:\n  servers: [\"{}\"]\n",
            setup.dns.addr()
        ),
    )
}

/// `sbx learn --backend BACKEND ARGS… -- sh -c SCRIPT` in `cwd`.
fn learn(backend: &str, args: &[&str], script: &str, cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["learn", "--backend", backend])
        .args(args)
        .args(["--", "sh", "-c", script])
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sbx learn")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The allow entries `path` itself adds (not its base's), as sbx loads them.
fn own_entries(path: &Path) -> Vec<String> {
    let mut loader = sbx::policy::Loader::new();
    let policy = loader
        .load(path)
        .unwrap_or_else(|| panic!("{:?}", loader.diagnostics()));
    let name = path.display().to_string();
    policy
        .allow
        .iter()
        .filter(|r| *r.origin.path == *name)
        .map(|r| r.entry.to_yaml())
        .collect()
}

/// `sbx check PATH`: no errors and no warnings.
fn checks_clean(path: &Path) {
    let out = common::sbx(
        &["check", "--deny-warnings", path.to_str().unwrap()],
        path.parent().unwrap(),
    );
    assert!(out.status.success(), "{}", text(&out));
}

fn learns_exactly_what_the_script_used(backend: &str) {
    require_root();
    let _guard = exclusive();
    let before = host_state();
    let s = setup();
    base(&s, "");
    let out = learn(
        backend,
        &["--base", "base.yaml", "-o", "learned.yaml"],
        &script(0),
        s.dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let learned = s.dir.path().join("learned.yaml");
    let written = std::fs::read_to_string(&learned).unwrap();
    assert_eq!(
        own_entries(&learned),
        [
            "\"api.learn.test:8081\"",
            "{host: time.learn.test, ports: [5353], protocol: udp}",
            "\"web.learn.test:8080\"",
            format!("\"{LITERAL}:8082\"").as_str(),
        ],
        "{written}"
    );
    assert!(
        written.contains("extends:\n  - \"base.yaml\"\n"),
        "{written}"
    );
    assert!(
        written.contains("  #   unused.learn.test ("),
        "a name asked and never used is a comment: {written}"
    );
    checks_clean(&learned);

    // Learned again: the same bytes.
    let again = learn(
        backend,
        &["--base", "base.yaml", "-o", "again.yaml"],
        &script(0),
        s.dir.path(),
    );
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(s.dir.path().join("again.yaml")).unwrap(),
        written
    );

    // The learned policy runs the script, and denies what the script did not use.
    let applied = common::sbx_sh(backend, &learned, &script(0));
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let unused = [
        "tcp:web.learn.test:8081".to_string(),
        format!("tcp:{LITERAL}:8081"),
        "tcp:10.215.0.8:8082".to_string(),
        "tcp:unused.learn.test:8080".to_string(),
    ];
    let denied = outcomes(&apply_probes(backend, &learned, &unused));
    assert_eq!(denied.get(&unused[0]).map(String::as_str), Some("denied"));
    assert_eq!(denied.get(&unused[1]).map(String::as_str), Some("denied"));
    assert_eq!(denied.get(&unused[2]).map(String::as_str), Some("denied"));
    // Never allowed: the DNS service refuses the name.
    assert_eq!(denied.get(&unused[3]).map(String::as_str), Some("no-name"));
    drop(s);
    assert_eq!(host_state(), before);
}

fn with_a_base_it_extends_it_and_repeats_nothing_it_allows(backend: &str) {
    require_root();
    let _guard = exclusive();
    let s = setup();
    base(
        &s,
        "network:\n  mode: allowlist\n  allow:\n    - web.learn.test:8080\n    - \
         10.215.0.0/24:8082\n",
    );
    std::fs::create_dir(s.dir.path().join("out")).unwrap();
    let out = learn(
        backend,
        &["--base", "base.yaml", "-o", "out/learned.yaml"],
        &script(0),
        s.dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let learned = s.dir.path().join("out/learned.yaml");
    let written = std::fs::read_to_string(&learned).unwrap();
    assert!(
        written.contains("extends:\n  - \"../base.yaml\"\n"),
        "{written}"
    );
    assert_eq!(
        own_entries(&learned),
        [
            "\"api.learn.test:8081\"",
            "{host: time.learn.test, ports: [5353], protocol: udp}",
        ],
        "{written}"
    );
    checks_clean(&learned);
    let applied = common::sbx_sh(backend, &learned, &script(0));
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    drop(s.host);
}

fn the_commands_exit_status_passes_through(backend: &str) {
    require_root();
    let _guard = exclusive();
    let s = setup();
    base(&s, "");
    let out = learn(
        backend,
        &["--base", "base.yaml", "-o", "learned.yaml"],
        &script(7),
        s.dir.path(),
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    // What it used before it failed is written all the same.
    assert_eq!(own_entries(&s.dir.path().join("learned.yaml")).len(), 4);
    drop(s.host);
}

/// Sends one DNS question with the given wire labels to the sandbox's name server, and prints
/// the reply's code.
const RAW_QUERY: &str = "import socket, struct, sys\n\
labels = [b'x\\n    - \\\"10.215.0.8:1\\\" #', b'evil.learn', b'test']\n\
q = struct.pack('>HHHHHH', 0x5b5b, 0x100, 1, 0, 0, 0)\n\
q += b''.join(bytes([len(l)]) + l for l in labels) + b'\\0' + struct.pack('>HH', 1, 1)\n\
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
s.sendto(q, (ns, 53)); print('rcode', s.recv(512)[3] & 15)\n";

/// A process name with a line break and YAML in it.
const HOSTILE_PROCESS: &str = "import ctypes, socket\n\
ctypes.CDLL(None).prctl(15, b'a\\n    - 10.215.0.8', 0, 0, 0)\n\
socket.create_connection(('web.learn.test', 8080)).close()\n";

fn a_hostile_name_or_process_name_cannot_inject_yaml(backend: &str) {
    require_root();
    let _guard = exclusive();
    let s = setup();
    base(&s, "");
    // And what it writes into the output file itself, which is the user's, is not kept.
    let script = format!(
        "python3 -c \"{RAW_QUERY}\" && python3 -c \"{HOSTILE_PROCESS}\" && for i in $(seq 200); \
         do echo '    - 10.215.0.8:1' >> learned.yaml; done"
    );
    let out = learn(
        backend,
        &["--base", "base.yaml", "-o", "learned.yaml"],
        &script,
        s.dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // REFUSED: the name is no host name, so nothing is asked upstream, and nothing recorded.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rcode 5"),
        "{}",
        text(&out)
    );
    let learned = s.dir.path().join("learned.yaml");
    let written = std::fs::read_to_string(&learned).unwrap();
    assert_eq!(
        own_entries(&learned),
        ["\"web.learn.test:8080\""],
        "{written}"
    );
    assert!(!written.contains("evil"), "{written}");
    for line in written.lines() {
        assert!(
            line.trim_start().starts_with('#') || !line.contains("10.215.0.8"),
            "{written}"
        );
    }
    checks_clean(&learned);
    drop(s.host);
}

/// `--wildcards 3`: three names below one parent become `*.parent`, which then admits a fourth
/// name below it (through sbx's DNS service) and still not the parent itself.
fn wildcards_are_proposed_and_work_under_apply(backend: &str) {
    require_root();
    let _guard = exclusive();
    let host = TestHost::start_with(&["tcp:8080"], Some(BLOCK));
    let zone = Zone::new()
        .addrs("a.pkg.learn.test", &["10.215.0.11"], 300)
        .addrs("b.pkg.learn.test", &["10.215.0.12"], 300)
        .addrs("c.pkg.learn.test", &["10.215.0.13"], 300)
        .addrs("d.pkg.learn.test", &["10.215.0.14"], 300)
        .addrs("pkg.learn.test", &["10.215.0.15"], 300);
    let dns = DnsServer::start(zone);
    let dir = Dir::new();
    dir.write(
        "base.yaml",
        &format!("version: 1\ndns:\n  servers: [\"{}\"]\n", dns.addr()),
    );
    let used: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("tcp:{n}.pkg.learn.test:8080"))
        .collect();
    let out = learn(
        backend,
        &[
            "--base",
            "base.yaml",
            "-o",
            "learned.yaml",
            "--wildcards",
            "3",
        ],
        &format!("python3 {PROBE} {}", used.join(" ")),
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let learned = dir.path().join("learned.yaml");
    let written = std::fs::read_to_string(&learned).unwrap();
    assert_eq!(
        own_entries(&learned),
        ["\"*.pkg.learn.test:8080\""],
        "{written}"
    );
    assert!(
        written.contains(
            "# proposed for 3 names: a.pkg.learn.test, b.pkg.learn.test, c.pkg.learn.test\n"
        ),
        "{written}"
    );
    checks_clean(&learned);
    let probes = [
        "tcp:d.pkg.learn.test:8080".to_string(),
        "tcp:pkg.learn.test:8080".to_string(),
    ];
    let outcomes = outcomes(&apply_probes(backend, &learned, &probes));
    assert_eq!(outcomes.get(&probes[0]).map(String::as_str), Some("ok"));
    assert_eq!(
        outcomes.get(&probes[1]).map(String::as_str),
        Some("no-name")
    );
    drop(host);
}

/// `--user`, as for `sbx apply`: the learning run's command is that user's. A command that
/// reaches nothing learns `mode: none`.
fn the_command_runs_as_user(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let output = dir.path().join("learned.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["learn", "--backend", backend, "--user", "nobody", "-o"])
        .arg(&output)
        .args(["--", "id", "-u"])
        .current_dir("/")
        .output()
        .expect("run sbx learn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    // It reached nothing: the policy of a job without network.
    let learned = std::fs::read_to_string(&output).unwrap();
    assert!(learned.contains("network:\n  mode: none\n"), "{learned}");
    checks_clean(&output);
}

/// Without `-o` the policy is sbx's stdout: what the command prints there goes to stderr, so
/// that a command cannot write keys of its own into the policy (an `extends` of a file allowing
/// everything, a DNS server of its choosing).
fn without_output_the_commands_stdout_is_not_part_of_the_policy(backend: &str) {
    require_root();
    let _guard = exclusive();
    let dir = Dir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["learn", "--backend", backend, "--"])
        .args([
            "sh",
            "-c",
            "echo 'extends: [/tmp/everything.yaml]'; echo injected >&2",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run sbx learn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stdout.contains("everything"), "{stdout}");
    assert!(stdout.starts_with("# Written by `sbx learn`"), "{stdout}");
    assert!(
        stderr.contains("extends: [/tmp/everything.yaml]"),
        "{stderr}"
    );
    assert!(stderr.contains("injected"), "{stderr}");
}

/// As an unprivileged `--user`, the learning run's DNS still goes through sbx's service (open
/// mode with the DNS gate) and its connections are seen: the name it used is learned as a name.
fn as_an_unprivileged_user_names_and_connections_are_learned(backend: &str) {
    require_root();
    let _guard = exclusive();
    let s = setup();
    base(&s, "");
    let output = s.dir.path().join("learned.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["learn", "--backend", backend, "--user", "nobody", "--base"])
        .arg(s.dir.path().join("base.yaml"))
        .arg("-o")
        .arg(&output)
        .args(["--", "python3", PROBE, "tcp:web.learn.test:8080"])
        .current_dir("/")
        .output()
        .expect("run sbx learn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        own_entries(&output),
        ["\"web.learn.test:8080\""],
        "{}",
        text(&out)
    );
    drop(s.host);
}

crate::on_both_backends!(
    as_an_unprivileged_user_names_and_connections_are_learned,
    without_output_the_commands_stdout_is_not_part_of_the_policy,
    the_command_runs_as_user,
    learns_exactly_what_the_script_used,
    with_a_base_it_extends_it_and_repeats_nothing_it_allows,
    the_commands_exit_status_passes_through,
    a_hostile_name_or_process_name_cannot_inject_yaml,
    wildcards_are_proposed_and_work_under_apply,
);

/// A base with errors: they are shown, nothing runs, and no file is created.
#[test]
fn a_base_with_errors_runs_nothing_and_writes_nothing() {
    let dir = Dir::new();
    dir.write(
        "base.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  alow: []\n",
    );
    let out = learn(
        "nftables",
        &["--base", "base.yaml", "-o", "learned.yaml"],
        "touch ran",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown-key"), "{stderr}");
    assert!(
        stderr.contains("the base policy base.yaml has errors: nothing was run"),
        "{stderr}"
    );
    assert!(!dir.path().join("ran").exists());
    assert!(!dir.path().join("learned.yaml").exists());
}
