//! `sbx learn`: run a command with the network open (less what a base policy denies), watch what
//! it asks of DNS and what it connects to, and write the allowlist policy that admits exactly
//! that ([`synth`]).

pub mod synth;
