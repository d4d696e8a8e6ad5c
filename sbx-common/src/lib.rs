//! Types shared by sbx (userspace) and its eBPF programs: map keys, map values and events.
//!
//! Everything here is `#[repr(C)]` plain data so both sides agree on the layout byte for byte;
//! userspace-only trait impls sit behind the `user` feature.
#![no_std]
