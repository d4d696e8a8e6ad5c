//! `cargo xtask demo`: sbx at work on any machine, with no internet.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const NETNS: &str = "sbxdemo";
const LINK: &str = "sbxdemoh";
const PEER: &str = "sbxdemos";
const HOST_SIDE: &str = "10.213.250.1/24";
const SERVER: &str = "10.213.250.2";

/// Two HTTP services on the test host: 8080 (allowed by the demo policy) and 9090 (not).
const SERVICES: &str = r#"
import http.server, threading
def serve(port, text):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = text.encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args): pass
    s = http.server.HTTPServer(("10.213.250.2", port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
serve(8080, "hello from the build cache (port 8080, allowed)\n")
serve(9090, "the crown jewels (port 9090, should be unreachable)\n")
print("ready", flush=True)
threading.Event().wait()
"#;

/// Removes the test host however the demo ends.
struct TestHost {
    server: Option<Child>,
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
        let _ = Command::new("ip").args(["link", "del", LINK]).output();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A heading, bold on a terminal; plain text in a log or a pipe.
fn step(text: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m== {text}\x1b[0m");
    } else {
        println!("\n== {text}");
    }
}

pub fn run(root: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the demo creates a network namespace and runs sbx, which needs root: \
                    run `sudo cargo xtask demo` (or as root)"
                .into(),
        );
    }
    step("building sbx");
    crate::run(
        root,
        "cargo",
        &["build", "--release", "--locked", "-p", "sbx-cli"],
    )?;
    let sbx = root.join("target/release/sbx");

    step(&format!(
        "starting a throw-away test host {SERVER} (namespace {NETNS}) with two web services"
    ));
    let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    let _ = Command::new("ip").args(["link", "del", LINK]).output();
    let mut host = TestHost { server: None };
    ip(&["netns", "add", NETNS])?;
    ip(&[
        "link", "add", LINK, "type", "veth", "peer", "name", PEER, "netns", NETNS,
    ])?;
    ip(&["addr", "add", HOST_SIDE, "dev", LINK])?;
    ip(&["link", "set", LINK, "up"])?;
    ip(&[
        "netns",
        "exec",
        NETNS,
        "ip",
        "addr",
        "add",
        &format!("{SERVER}/24"),
        "dev",
        PEER,
    ])?;
    ip(&["netns", "exec", NETNS, "ip", "link", "set", PEER, "up"])?;
    ip(&[
        "netns",
        "exec",
        NETNS,
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.213.250.1",
    ])?;
    let mut server = Command::new("ip")
        .args(["netns", "exec", NETNS, "python3", "-c", SERVICES])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the test services (python3): {e}"))?;
    let mut ready = String::new();
    BufReader::new(server.stdout.take().expect("piped"))
        .read_line(&mut ready)
        .map_err(|e| e.to_string())?;
    host.server = Some(server);
    if ready.trim() != "ready" {
        return Err("the test services did not start".into());
    }

    let dir = std::env::temp_dir().join(format!("sbx-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let policy = dir.join("demo.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nname: demo\ndescription: Only the build cache on port 8080\nnetwork:\n  mode: allowlist\n  allow:\n    - {SERVER}:8080\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    step("the policy");
    print!("{}", std::fs::read_to_string(&policy).unwrap_or_default());

    step("sbx plan: what it will enforce");
    let _ = Command::new(&sbx).arg("plan").arg(&policy).status();

    let client = format!(
        "echo '$ curl http://{SERVER}:8080/'; curl -sS --max-time 3 http://{SERVER}:8080/; \
         echo '$ curl http://{SERVER}:9090/'; curl -sS --max-time 3 http://{SERVER}:9090/; \
         echo \"(curl exit status $?)\""
    );
    step("outside the sandbox, both services answer");
    let _ = Command::new("sh").args(["-c", &client]).status();
    // The backend `auto` picks, named so that the run below says which one enforced.
    let backend = Command::new(&sbx)
        .args(["apply", "--dry-run"])
        .arg(&policy)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("backend: ").map(str::to_string))
        })
        .unwrap_or_else(|| "auto".into());
    step(&format!(
        "sbx apply --backend {backend} demo.yaml -- sh -c 'curl …; curl …'"
    ));
    let status = Command::new(&sbx)
        .args(["apply", "--backend", &backend])
        .arg(&policy)
        .args(["--", "sh", "-c", &client])
        .status()
        .map_err(|e| e.to_string())?;
    println!("sbx exited with {status}");
    let kept = if backend == "ebpf" {
        "; sbx removed its sandbox and keeps only its eBPF programs, loaded once for fast \
         start-ups (in /run/sbx/bpf; `sbx gc --all` removes them)"
    } else {
        "; sbx removed its sandbox: nothing of it is left"
    };
    step(&format!("cleaning up: the test host goes{kept}"));
    let _ = std::fs::remove_dir_all(&dir);
    drop(host);
    Ok(())
}
