//! What the test command needs on a Debian machine, checked all at once (`cargo xtask test`
//! names everything missing in one message) and installed by `cargo xtask setup`.

use std::path::Path;
use std::process::Command;

use crate::run;

/// Debian packages: the end-to-end tests' hosts and clients (iproute2, nftables, dnsutils,
/// curl, netcat), the privilege and cleanup tests (util-linux's setpriv, procps' pgrep), the
/// eBPF build (llvm-22-dev: bpf-linker and llvm-objcopy), the package round trip (man-db,
/// binutils' strip), and python3 for the tests' probe clients.
const PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "dnsutils",
    "curl",
    "netcat-openbsd",
    "util-linux",
    "procps",
    "python3",
    "llvm-22-dev",
    "man-db",
    "binutils",
];

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn stdout(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !stdout("dpkg-query", &["-W", "-f=${Status}", p]).contains("install ok installed")
        })
        .collect()
}

fn missing_components() -> Vec<&'static str> {
    let installed = stdout("rustup", &["component", "list", "--installed"]);
    ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect()
}

fn nightly_missing() -> bool {
    !succeeds("rustc", &["+nightly", "--version"])
}

fn rust_src_missing() -> bool {
    let sysroot = stdout("rustc", &["+nightly", "--print", "sysroot"]);
    !Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .exists()
}

fn bpf_linker_missing() -> bool {
    !succeeds("bpf-linker", &["--version"])
}

/// Everything the test command needs and this machine lacks, each as (what, how to install).
pub fn missing() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let packages = missing_packages();
    if !packages.is_empty() {
        found.push((
            format!("Debian packages {}", packages.join(" ")),
            format!("apt-get install -y {}", packages.join(" ")),
        ));
    }
    let components = missing_components();
    if !components.is_empty() {
        found.push((
            format!("rustup components {}", components.join(" ")),
            format!("rustup component add {}", components.join(" ")),
        ));
    }
    if nightly_missing() {
        found.push((
            "the nightly toolchain (eBPF build)".into(),
            "rustup toolchain install nightly --component rust-src".into(),
        ));
    } else if rust_src_missing() {
        found.push((
            "rust-src for nightly (eBPF build)".into(),
            "rustup component add rust-src --toolchain nightly".into(),
        ));
    }
    if bpf_linker_missing() {
        found.push((
            "bpf-linker (eBPF build)".into(),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker \
             --no-default-features --features llvm-22"
                .into(),
        ));
    }
    found
}

/// Fails, naming everything missing at once, unless the machine has all the test command needs.
pub fn check() -> Result<(), String> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(what, how)| format!("  - {what}: {how}"))
        .collect();
    Err(format!(
        "this machine lacks what the test suite needs:\n{}\n`cargo xtask setup` (as root) \
         installs all of it",
        list.join("\n")
    ))
}

/// Installs what `missing` finds, in dependency order (LLVM before bpf-linker).
pub fn install(root: &Path) -> Result<(), String> {
    let packages = missing_packages();
    if !packages.is_empty() {
        run(root, "apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&packages);
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot start apt-get: {e}"))?;
        if !status.success() {
            return Err(format!("`apt-get {}` failed ({status})", args.join(" ")));
        }
    }
    let components = missing_components();
    if !components.is_empty() {
        let mut args = vec!["component", "add"];
        args.extend(&components);
        run(root, "rustup", &args)?;
    }
    // The machine's own nightly is used as it is: another nightly would build other bytes than
    // the committed eBPF object.
    if nightly_missing() {
        run(
            root,
            "rustup",
            &["toolchain", "install", "nightly", "--component", "rust-src"],
        )?;
    } else if rust_src_missing() {
        run(
            root,
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    if bpf_linker_missing() {
        eprintln!("+ LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker …");
        let status = Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .status()
            .map_err(|e| format!("cannot start cargo: {e}"))?;
        if !status.success() {
            return Err(format!("installing bpf-linker failed ({status})"));
        }
    }
    check()?;
    eprintln!("everything the test suite needs is installed");
    Ok(())
}
