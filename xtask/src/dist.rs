//! `cargo xtask dist`: a Debian package of sbx, built with dpkg-deb (on every Debian system)
//! from a staged tree: /usr/bin/sbx, the manual pages, the shell completions, and the example
//! policies under /usr/share/sbx/policies. `--round-trip` then installs it, checks it, and
//! removes it again (CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

/// Builds `target/dist/sbx_VERSION_ARCH.deb` and returns its path.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    run(
        root,
        "cargo",
        &["build", "--release", "--locked", "-p", "sbx-cli"],
    )?;
    let binary = root.join("target/release/sbx");
    let bin = binary.to_str().ok_or("the target path is not UTF-8")?;
    let version = output(bin, &["--version"])?
        .strip_prefix("sbx ")
        .ok_or("unexpected `sbx --version` output")?
        .to_string();
    let arch = output("dpkg", &["--print-architecture"])?;
    let name = format!("sbx_{version}_{arch}");
    let dist = root.join("target/dist");
    let stage = dist.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    let dir = |path: &str| -> Result<PathBuf, String> {
        let d = stage.join(path);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(d)
    };

    let usr_bin = dir("usr/bin")?.join("sbx");
    // Without the debug information the release profile keeps for profiling: a tenth the size.
    run(
        root,
        "strip",
        &[
            "--strip-debug",
            "-o",
            usr_bin.to_str().ok_or("path not UTF-8")?,
            bin,
        ],
    )?;
    let man = dir("usr/share/man/man1")?;
    run(root, bin, &["man", man.to_str().ok_or("path not UTF-8")?])?;
    for page in std::fs::read_dir(&man).map_err(|e| e.to_string())? {
        let page = page.map_err(|e| e.to_string())?.path();
        run(
            root,
            "gzip",
            &["-9n", page.to_str().ok_or("path not UTF-8")?],
        )?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/sbx"),
        ("zsh", "usr/share/zsh/vendor-completions/_sbx"),
        ("fish", "usr/share/fish/vendor_completions.d/sbx.fish"),
    ] {
        let script = output(bin, &["completions", shell])?;
        let target = stage.join(path);
        dir(Path::new(path)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or(""))?;
        std::fs::write(&target, script + "\n").map_err(|e| format!("{}: {e}", target.display()))?;
    }
    copy_tree(&root.join("policies"), &dir("usr/share/sbx/policies")?)?;
    let doc = dir("usr/share/doc/sbx")?;
    std::fs::copy(root.join("README.md"), doc.join("README.md")).map_err(|e| e.to_string())?;

    let control = format!(
        "Package: sbx\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: sbx maintainers <sbx@example.invalid>\n\
         Depends: libc6, nftables, iproute2\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/sbx\n\
         Description: run a command under a declarative network policy\n \
         sbx runs a command so that it reaches exactly what a YAML policy allows (host\n \
         names, wildcards, addresses, ports), enforced with nftables or eBPF, and leaves\n \
         the machine as it found it. `sbx check` validates policies in CI.\n"
    );
    std::fs::write(dir("DEBIAN")?.join("control"), control).map_err(|e| e.to_string())?;
    let deb = dist.join(format!("{name}.deb"));
    run(
        root,
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            stage.to_str().ok_or("path not UTF-8")?,
            deb.to_str().ok_or("path not UTF-8")?,
        ],
    )?;
    Ok(deb)
}

/// Installs the package, checks what it installed, and removes it, leaving nothing: CI's proof
/// that the package works. Refuses where sbx is already installed from a package (it would be
/// replaced, then removed).
pub fn round_trip(root: &Path, deb: &Path) -> Result<(), String> {
    if output("dpkg-query", &["-W", "-f=${Status}", "sbx"]).is_ok_and(|s| s.contains("installed")) {
        return Err(
            "the sbx package is installed on this machine; the round trip would remove it".into(),
        );
    }
    let deb = deb.to_str().ok_or("path not UTF-8")?;
    run(root, "dpkg", &["-i", deb])?;
    let checked = (|| {
        run(root, "/usr/bin/sbx", &["--version"])?;
        let page = output("man", &["-w", "sbx"])?;
        eprintln!("man -w sbx: {page}");
        run(root, "/usr/bin/sbx", &["check", "/usr/share/sbx/policies"])
    })();
    let removed = run(root, "dpkg", &["-r", "sbx"]);
    checked.and(removed)?;
    let left: Vec<&str> = [
        "/usr/bin/sbx",
        "/usr/share/sbx",
        "/usr/share/man/man1/sbx.1.gz",
        "/usr/share/bash-completion/completions/sbx",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    if !left.is_empty() {
        return Err(format!("`dpkg -r sbx` left {}", left.join(", ")));
    }
    eprintln!("the package installed, worked and was removed without a trace");
    Ok(())
}
