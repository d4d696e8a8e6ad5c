//! Helpers shared by the integration tests: run the real `sbx` binary on files in a temporary
//! directory.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sbx::policy::yaml::{self, Kind, Node};
use serde_json::{Number, Value};

pub mod dns;
pub mod testnet;

/// `sbx apply --backend BACKEND POLICY -- sh -c SCRIPT`, its output collected.
pub fn sbx_sh(backend: &str, policy: &Path, script: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(["apply", "--backend", backend])
        .arg(policy)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap()
}

/// The end-to-end tests create network namespaces, nftables tables, cgroups and eBPF
/// attachments: they run as root, as CI does.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests create namespaces, nftables tables, cgroups and eBPF \
         attachments: run them as root (CI does)"
    );
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

pub fn sbx(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbx"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sbx")
}

/// `sbx check --format json PATHS…` in `cwd`: exit code and the parsed findings.
pub fn check_json(cwd: &Path, paths: &[&str]) -> (i32, Vec<Value>) {
    let mut args = vec!["check", "--format", "json"];
    args.extend_from_slice(paths);
    let out = sbx(&args, cwd);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let findings: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"));
    let Value::Array(findings) = findings else {
        panic!("expected a JSON array: {stdout}")
    };
    (out.status.code().expect("exit code"), findings)
}

/// `sbx check PATHS…` in `cwd` with human output: exit code and stderr.
pub fn check_human(cwd: &Path, paths: &[&str]) -> (i32, String) {
    let mut args = vec!["check"];
    args.extend_from_slice(paths);
    let out = sbx(&args, cwd);
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stderr).unwrap(),
    )
}

pub fn errors(findings: &[Value]) -> Vec<&Value> {
    findings
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect()
}

/// A YAML node as JSON, resolving plain scalars as the YAML 1.2 core schema does.
fn to_json(node: &Node<'_>) -> Value {
    match &node.kind {
        _ if node.is_null() => Value::Null,
        Kind::Scalar { text, plain: false } => Value::String(text.to_string()),
        Kind::Scalar { text, plain: true } => match text.as_ref() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => text
                .parse::<i64>()
                .map(|n| Value::Number(n.into()))
                .or_else(|_| {
                    text.parse::<f64>()
                        .map_err(|_| ())
                        .and_then(|f| Number::from_f64(f).map(Value::Number).ok_or(()))
                })
                .unwrap_or_else(|_| Value::String(text.to_string())),
        },
        Kind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Kind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

pub fn yaml_as_json(text: &str) -> Value {
    to_json(&yaml::parse(text).unwrap().root.unwrap())
}

/// A helper process of a test (a server, a recorder) that prints `ready` once it listens; killed
/// when dropped, also when the test fails.
pub struct Ready(std::process::Child);

impl Ready {
    /// Starts `command` with its output piped and waits for its `ready` line.
    pub fn start(command: &mut Command, what: &str) -> Ready {
        use std::io::BufRead as _;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {what}: {e}"));
        let mut line = String::new();
        // One byte at a time, so that nothing after the line is taken from the pipe.
        let mut stdout = std::io::BufReader::with_capacity(1, child.stdout.as_mut().unwrap());
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the {what} did not start");
        Ready(child)
    }

    /// What it printed after `ready`, once stopped.
    pub fn stop(mut self) -> String {
        let _ = self.0.kill();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut text);
        text
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
