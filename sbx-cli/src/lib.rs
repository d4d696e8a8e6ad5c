//! sbx runs a command under a declarative network policy.
//!
//! Data flows one way through one module per stage:
//! files → [`policy`] (parse, validate, compose) → [`plan`] (names resolved by [`resolve`],
//! rules normalised) → [`backend`] (nftables) → [`sandbox`] (spawn, supervise, DNS service,
//! teardown). [`sys`] wraps the kernel interfaces once.
//! [`review`] compares and tests policies for review.
//! [`cli`] is the `sbx` command line on top; [`diag`] is how problems are reported.

pub mod backend;
pub mod check;
pub mod cli;
pub mod diag;
pub mod doctor;
pub mod plan;
pub mod policy;
pub mod resolve;
pub mod review;
pub mod sandbox;
pub mod sys;
