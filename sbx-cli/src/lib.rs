//! sbx runs a command under a declarative network policy.
//!
//! Data flows one way through one module per stage:
//! files → [`policy`] (parse, validate, compose) → [`plan`] (names resolved by [`resolve`],
//! rules normalised) → [`backend`] (nftables or eBPF) → [`sandbox`] (spawn, supervise, DNS
//! service, teardown). [`state`] is what sbx keeps on the host between its runs (slots, locks),
//! below the backends that use it. [`sys`] wraps the kernel interfaces once.
//! [`review`] compares and tests policies for review.
//! [`export`] writes a composed policy for another engine (Cilium, Kubernetes, systemd).
//! [`cli`] is the `sbx` command line on top, with [`check`] and [`doctor`]; [`diag`] is how
//! problems are reported. A module imports only modules below it (`cargo xtask lint`).

pub mod backend;
pub mod check;
pub mod cli;
pub mod diag;
pub mod doctor;
pub mod export;
pub mod learn;
pub mod plan;
pub mod policy;
pub mod resolve;
pub mod review;
pub mod sandbox;
pub mod state;
pub mod sys;
