//! `sbx doctor`: whether each backend can run on this machine, why not, and what sbx keeps on
//! the host between runs.

use std::fmt::Write;
use std::path::Path;

use crate::backend::ebpf;
use crate::backend::requirements::{self, Check};
use crate::state::STATE_DIR;

fn render(out: &mut String, name: &str, checks: &[Check]) -> bool {
    let ok = checks.iter().all(|c| c.problem.is_none());
    let _ = writeln!(out, "{name}: {}", if ok { "can run" } else { "cannot run" });
    for c in checks {
        match &c.problem {
            None => {
                let _ = writeln!(out, "  ok   {}", c.what);
            }
            Some(problem) => {
                let _ = writeln!(out, "  FAIL {}: {problem}", c.what);
            }
        }
    }
    ok
}

/// The report, and whether some backend can run.
pub fn report() -> (String, bool) {
    let mut out = String::new();
    let ebpf_ok = render(&mut out, "ebpf backend", &requirements::ebpf());
    let nft_ok = render(&mut out, "nftables backend", &requirements::nftables());
    let _ = writeln!(
        out,
        "--backend auto: {}",
        match (ebpf_ok, nft_ok) {
            (true, _) => "ebpf",
            (false, true) => "nftables",
            (false, false) => "neither can run",
        }
    );
    let _ = writeln!(out, "\nstate on this host (all under {STATE_DIR}):");
    // Unreadable (sbx's state is root's): say so rather than report an empty host.
    let unreadable = |path: &Path, e: &std::io::Error| {
        format!(
            "cannot tell ({} is not readable: {}; run `sudo sbx doctor`)",
            path.display(),
            e.kind()
        )
    };
    let slots_dir = Path::new(STATE_DIR).join("slots");
    let counted = |n: usize| format!("{n} (live or left by a dead sbx; `sbx gc` removes the dead)");
    let slots = match std::fs::read_dir(&slots_dir) {
        Ok(d) => counted(d.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => counted(0),
        Err(e) => unreadable(&slots_dir, &e),
    };
    let _ = writeln!(out, "  sandbox slots: {slots}");
    let pins = ebpf::bpf_dir();
    let listed = std::fs::read_dir(&pins).map(|d| {
        d.filter_map(|e| e.ok())
            .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Vec<String>>()
    });
    let pinned = match listed {
        Ok(pinned) => pinned,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            let _ = writeln!(out, "  eBPF programs and maps: {}", unreadable(&pins, &e));
            return (out, ebpf_ok || nft_ok);
        }
    };
    if pinned.is_empty() {
        let _ = writeln!(out, "  eBPF programs and maps: none pinned");
    } else {
        let _ = writeln!(
            out,
            "  eBPF programs and maps pinned in {} (kept between runs so a sandbox starts in \
             milliseconds; bounded: {} programs, {} maps of fixed maximum size; `sbx gc --all` \
             removes them): {}",
            pins.display(),
            ebpf::PROGRAMS,
            ebpf::MAPS.len(),
            pinned.join(", ")
        );
        let counts: Vec<String> = ebpf::pinned_entries()
            .into_iter()
            .map(|(map, n)| format!("{map} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  entries in the maps (all sandboxes): {}",
            counts.join(", ")
        );
        if let Some(bytes) = ebpf::pinned_memory() {
            let _ = writeln!(
                out,
                "  kernel memory held by the maps: {:.1} MiB",
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
    }
    (out, ebpf_ok || nft_ok)
}
