//! The kernel's clocks, where std has no reading of them.

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock eBPF programs read (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail to be read on Linux; 0 would only make times read as now.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
