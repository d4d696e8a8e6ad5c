//! Development tasks: `cargo xtask <task>`. Each task runs the same commands a developer would
//! type, so CI and README stay one command each.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

mod demo;
mod dist;
mod ebpf;
mod lint;
mod setup;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build and development tasks for sbx")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The whole test suite, as CI runs it: formatting, clippy, every test, every policy
    /// (checked, tested, and diffed against the previous commit).
    Test,
    /// Install everything the test suite needs (Debian packages, rustup components, the
    /// nightly's rust-src, bpf-linker); as root. `test` names what is missing.
    Setup,
    /// Check that sbx-cli's stages import only the stages below them.
    Lint,
    /// Rewrite policies/schema.json from `sbx schema`.
    Schema,
    /// Every benchmark; figures and targets are recorded in docs/benchmarks.md.
    Bench,
    /// Build the eBPF programs (nightly + rust-src + bpf-linker) into sbx-cli/ebpf/sbx.bpf.o,
    /// the object sbx embeds. Reproducible: the same sources give the same bytes anywhere.
    BuildEbpf {
        /// Fail if the committed object differs from what the sources build (CI).
        #[arg(long)]
        check: bool,
    },
    /// Show sbx at work, offline: a throw-away test host with two services, one allowed by the
    /// policy and one not, reached through `sbx apply`. Needs root; removes everything after.
    Demo,
    /// Build a Debian package, target/dist/sbx_VERSION_ARCH.deb: /usr/bin/sbx, manual pages,
    /// shell completions, and the example policies under /usr/share/sbx/policies.
    Dist {
        /// Then install it, check it (`sbx --version`, `man -w sbx`, `sbx check` of the
        /// installed policies) and remove it, leaving nothing (CI; needs root).
        #[arg(long)]
        round_trip: bool,
    },
    /// Fuzz the policy parser with cargo-fuzz (needs the nightly toolchain and cargo-fuzz).
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

fn main() -> ExitCode {
    let root = workspace_root();
    let result = match Cli::parse().task {
        Task::Test => test(&root),
        Task::Setup => setup::install(&root),
        Task::Lint => lint::run(&root),
        Task::Schema => schema(&root),
        Task::Bench => run(&root, "cargo", &["bench", "--locked", "-p", "sbx-cli"]),
        Task::Demo => demo::run(&root),
        Task::BuildEbpf { check } => ebpf::build(&root, check),
        Task::Dist { round_trip } => dist::build(&root).and_then(|deb| {
            eprintln!("built {}", deb.display());
            if round_trip {
                dist::round_trip(&root, &deb)
            } else {
                Ok(())
            }
        }),
        Task::Fuzz { seconds } => fuzz(&root, seconds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub(crate) fn run(root: &Path, program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

fn test(root: &Path) -> Result<(), String> {
    // Everything missing at once, before any step runs (and so before one looks like it failed).
    setup::check()?;
    run(root, "cargo", &["fmt", "--all", "--check"])?;
    lint::run(root)?;
    // The committed eBPF object must be what its sources build.
    ebpf::build(root, true)?;
    run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run(
        root,
        "cargo",
        &["build", "--release", "--locked", "-p", "sbx-cli"],
    )?;
    run(
        root,
        "target/release/sbx",
        &["check", "--deny-warnings", "policies/"],
    )?;
    run(
        root,
        "target/release/sbx",
        &["test", "--deny-untested", "policies/"],
    )?;
    policy_diff(root)?;
    cargo_test(root)
}

/// The diff step of docs/examples/policy-review.yml on this repository's policies: what they
/// changed since the previous commit (the last commit, and whatever is not committed yet), as
/// the markdown a pull request would be commented with. Informational here: a widening is for
/// the review of that change to judge, not a failure of the build; sbx failing to compare
/// (exit 2: a policy that does not load, a git problem) is one.
fn policy_diff(root: &Path) -> Result<(), String> {
    let has_parent = Command::new("git")
        .args(["rev-parse", "-q", "--verify", "HEAD~1^{commit}"])
        .current_dir(root)
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_parent {
        eprintln!(
            "xtask: no previous commit in this clone (a shallow clone, or not a git clone): \
             policy diff skipped"
        );
        return Ok(());
    }
    let args = [
        "diff",
        "--git",
        "HEAD~1",
        "--format",
        "markdown",
        "policies/",
    ];
    eprintln!("+ target/release/sbx {}", args.join(" "));
    let status = Command::new(root.join("target/release/sbx"))
        .args(args)
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot start sbx: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            eprintln!("xtask: the policy change above widens access (informational here)");
            Ok(())
        }
        _ => Err(format!("`sbx {}` failed ({status})", args.join(" "))),
    }
}

/// `cargo test`, its output passed through, closed by one line with the totals of every test
/// binary (cargo's own last line is that of whichever binary ran last, often a doc-test run of
/// nothing).
fn cargo_test(root: &Path) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    let args = ["test", "--workspace", "--locked"];
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| format!("reading cargo test output: {e}"))?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            passed += count(counts, "passed");
            failed += count(counts, "failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    println!("\nall tests: {passed} passed, {failed} failed");
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

/// The number before `what` in `ok. 12 passed; 0 failed; 0 ignored; …`.
fn count(counts: &str, what: &str) -> u64 {
    counts
        .split(['.', ';'])
        .filter_map(|part| part.trim().strip_suffix(what))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn schema(root: &Path) -> Result<(), String> {
    let out = Command::new("cargo")
        .args(["run", "--quiet", "-p", "sbx-cli", "--", "schema"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run sbx schema: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let path = root.join("policies/schema.json");
    std::fs::write(&path, out.stdout).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn fuzz(root: &Path, seconds: u32) -> Result<(), String> {
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        return Err("cargo-fuzz is missing: `cargo install cargo-fuzz` \
             (and `rustup toolchain install nightly`)"
            .into());
    }
    let max_time = format!("-max_total_time={seconds}");
    run(
        root,
        "cargo",
        &["+nightly", "fuzz", "run", "policy_parse", "--", &max_time],
    )
}
