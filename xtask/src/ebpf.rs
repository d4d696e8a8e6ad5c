//! `cargo xtask build-ebpf`: the eBPF object sbx embeds, built reproducibly.

use std::path::Path;
use std::process::Command;

/// Where the object lives; committed, so that users build sbx with stable Rust alone.
pub const OBJECT: &str = "sbx-cli/ebpf/sbx.bpf.o";

fn missing(what: &str, how: &str) -> String {
    format!("{what} is missing: {how}")
}

/// Says exactly what of the toolchain is missing and how to install it.
fn check_toolchain() -> Result<(), String> {
    let nightly = Command::new("rustc")
        .args(["+nightly", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        return Err(missing(
            "the nightly toolchain",
            "rustup toolchain install nightly",
        ));
    }
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .map_err(|e| e.to_string())?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        return Err(missing(
            "rust-src for nightly",
            "rustup component add rust-src --toolchain nightly",
        ));
    }
    if !objcopy().exists() {
        return Err(missing(
            &format!("{}", objcopy().display()),
            "apt-get install -y llvm-22 (or set LLVM_PREFIX to the LLVM bpf-linker uses)",
        ));
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(missing(
            "bpf-linker",
            "apt-get install -y llvm-22-dev && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker \
             --no-default-features --features llvm-22",
        ));
    }
    Ok(())
}

/// LLVM's objcopy, from the LLVM that bpf-linker is built against (`LLVM_PREFIX`, as for
/// bpf-linker; by default the llvm-22-dev package's).
fn objcopy() -> std::path::PathBuf {
    let prefix = std::env::var("LLVM_PREFIX").unwrap_or_else(|_| "/usr/lib/llvm-22".into());
    Path::new(&prefix).join("bin/llvm-objcopy")
}

pub fn build(root: &Path, check: bool) -> Result<(), String> {
    check_toolchain()?;
    let crate_dir = root.join("sbx-ebpf");
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .map_err(|e| e.to_string())?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    // BTF: the socket-local storage map (`OWNERS`) can only be created with BTF for its key and
    // value, so the object carries BTF (made from debug information, which is stripped below).
    // Paths of this checkout, the registry and the toolchain would otherwise end up in the
    // object; mapped to fixed names, the bytes are the same wherever it is built.
    let flags = format!(
        "-C debuginfo=2 -C link-arg=--btf --remap-path-prefix={}=/ws --remap-path-prefix={cargo_home}/registry/src=/cargo --remap-path-prefix={sysroot}=/rustc",
        root.display()
    );
    eprintln!("+ cargo +nightly build (sbx-ebpf, bpfel-unknown-none, release)");
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--locked",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
        ])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the eBPF programs failed".into());
    }
    let built = crate_dir.join("target/bpfel-unknown-none/release/sbx");
    // The DWARF the BTF was made from is not needed at load time: three quarters of the bytes.
    let stripped = crate_dir.join("target/bpfel-unknown-none/release/sbx.stripped");
    let status = Command::new(objcopy())
        .arg("--strip-debug")
        .arg(&built)
        .arg(&stripped)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", objcopy().display()))?;
    if !status.success() {
        return Err("stripping the eBPF object's debug information failed".into());
    }
    let bytes = std::fs::read(&stripped).map_err(|e| format!("{}: {e}", stripped.display()))?;
    let object = root.join(OBJECT);
    if check {
        let committed = std::fs::read(&object).map_err(|e| format!("{}: {e}", object.display()))?;
        if committed != bytes {
            return Err(format!(
                "{OBJECT} is stale: it differs from what sbx-ebpf builds. Run `cargo xtask build-ebpf` and commit the object"
            ));
        }
        eprintln!("{OBJECT} matches its sources ({} bytes)", bytes.len());
        return Ok(());
    }
    std::fs::create_dir_all(object.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    std::fs::write(&object, &bytes).map_err(|e| format!("{}: {e}", object.display()))?;
    eprintln!("wrote {OBJECT} ({} bytes)", bytes.len());
    Ok(())
}
