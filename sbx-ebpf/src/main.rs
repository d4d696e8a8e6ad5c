//! sbx's cgroup programs: every connect, send and socket creation of a sandboxed process is
//! judged against the policy of its sandbox (its cgroup), read from maps that sbx fills. Denials
//! fail at once with EPERM and are reported through a ring buffer.
//!
//! A UDP connect sends nothing, so one to a denied destination succeeds, as on a real network
//! (address selection connects to every candidate); its destination is held for the socket (see
//! `Held`), and `egress` refuses each datagram the socket sends there.
//!
//! The verdict, as in the Plan: the command's own sockets on loopback are always reachable (the
//! socket the kernel would deliver to was created in the sandbox); a deny rule refuses; in mode
//! `open` everything else is allowed, except the host's loopback (127.0.0.0/8, ::1, and the
//! unspecified addresses, which the kernel sends to loopback), which only an allow rule opens; in
//! mode `allowlist` only what an allow rule admits; in mode `none` nothing. DNS (port 53) goes to
//! sbx's DNS service in allowlist mode (and in open mode with `FLAG_DNS`), wherever it was sent,
//! unless it is for the command's own socket.
//!
//! Observing (the policy's `flags`): with `FLAG_AUDIT` a connect or send the policy denies is
//! reported (`audit` set) and let through; with `FLAG_ALLOWED` every allowed connect, and every
//! unconnected send to a peer not already remembered, is reported too (not the command's own
//! loopback, nor DNS sent to sbx's service).
//!
//! Inbound (`ingress`): nothing from outside the sandbox reaches a listening TCP socket of the
//! command, and an unconnected UDP socket of the command receives only from its own sockets and
//! from the peers it sent to (replies), as the nftables backend's conntrack rules have it.
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::ptr;

use aya_ebpf::bindings::{
    BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock_addr, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
};
use aya_ebpf::btf_maps::SkStorage;
use aya_ebpf::helpers::generated::{
    bpf_sk_cgroup_id, bpf_sk_fullsock, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release,
    bpf_sk_storage_get, bpf_skb_cgroup_id,
};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
};
use aya_ebpf::macros::{btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, map};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, RingBuf};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext, SockContext};
use sbx_common::*;

const MAX_SANDBOXES: u32 = 4096;
const MAX_ADDRESS_ENTRIES: u32 = 1 << 20;

#[map]
static POLICIES: HashMap<u64, Policy> = HashMap::with_max_entries(MAX_SANDBOXES, 0);
#[map]
static RULE_SETS: HashMap<VerdictKey, RuleSets> = HashMap::with_max_entries(MAX_SANDBOXES * 2, BPF_F_NO_PREALLOC);
#[map]
static ALLOW4: LpmTrie<Addr4Key, u64> = LpmTrie::with_max_entries(MAX_ADDRESS_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static DENY4: LpmTrie<Addr4Key, u64> = LpmTrie::with_max_entries(MAX_ADDRESS_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static ALLOW6: LpmTrie<Addr6Key, u64> = LpmTrie::with_max_entries(MAX_ADDRESS_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static DENY6: LpmTrie<Addr6Key, u64> = LpmTrie::with_max_entries(MAX_ADDRESS_ENTRIES, BPF_F_NO_PREALLOC);
/// Single addresses, in sorted tables (see `sbx_common::Table`). Chunks are allocated as they are
/// written; at most 1,024 of 12 KiB (IPv4) and of 6 KiB (IPv6), shared by every sandbox.
#[map]
static TABLES: HashMap<VerdictKey, Table> = HashMap::with_max_entries(MAX_SANDBOXES * 2, BPF_F_NO_PREALLOC);
#[map]
static CHUNKS4: HashMap<ChunkKey, Chunk4> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);
#[map]
static CHUNKS6: HashMap<ChunkKey, Chunk6> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);
/// The sandbox every socket created in one belongs to (see `SocketOwner`); goes with the socket.
#[btf_map]
static OWNERS: SkStorage<SocketOwner> = SkStorage::new();
/// The denied destinations each UDP socket was connected to (see `Held`); goes with the socket.
#[btf_map]
static HELD: SkStorage<Held> = SkStorage::new();
/// Peers unconnected UDP sockets sent to, whose replies are admitted (see `PeerKey`): the least
/// recently written go first when it is full. An LRU map is allocated whole: 0.6 MiB of kernel
/// memory at this size (`sbx doctor`; 5.5 MiB at 65,536).
#[map]
static PEERS: LruHashMap<PeerKey, u64> = LruHashMap::with_max_entries(16384, 0);
#[map]
static ANSWERED4: HashMap<Addr4Key, Answered> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
#[map]
static ANSWERED6: HashMap<Addr6Key, Answered> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);
/// Per sandbox, the events the ring had no room for: one ring serves every sandbox, so a
/// command that floods it can crowd out another's events, and sbx reports how many were lost.
#[map]
static LOST: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_PACKET: u32 = 17;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;
/// `BPF_F_CURRENT_NETNS`: socket lookups in the caller's network namespace.
const CURRENT_NETNS: u64 = u64::MAX;
/// `BPF_TCP_LISTEN`, the state of a listening socket in `bpf_sock`.
const TCP_LISTEN: u32 = 10;
const LOOPBACK_IFINDEX: u32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[inline(always)]
fn cgroup() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Whether a rule set of `bits` (of `verdict`) covers `protocol` and `port`.
#[inline(always)]
fn rule_sets_match(cgroup: u64, verdict: u32, bits: u64, protocol: u8, port: u16) -> bool {
    // SAFETY: the value is only read, and maps are not resized.
    let Some(sets) = (unsafe { RULE_SETS.get(&VerdictKey::new(cgroup, verdict)) }) else {
        return false;
    };
    let mut index = 0;
    while index < MAX_RULE_SETS {
        let set = &sets.sets[index];
        if bits & (1u64 << index) != 0 && (set.protocol == PROTO_ANY || set.protocol == protocol) {
            let mut range = 0usize;
            while range < MAX_PORT_RANGES {
                if range < set.ranges as usize {
                    let [first, last] = set.ports[range];
                    if first <= port && port <= last {
                        return true;
                    }
                }
                range += 1;
            }
        }
        index += 1;
    }
    false
}

/// All ones when `a < b`, else 0. Computed (the borrow out of `a - b`, Hacker's Delight 2-12)
/// rather than branched on: the searches below then take one path whatever the comparisons
/// give, and the verifier follows that one path instead of one per outcome of every comparison
/// (2^10 per chunk searched, which exceeds its budget).
#[inline(always)]
fn below(a: u64, b: u64) -> u64 {
    // Inputs and result pass through values the compiler knows nothing of, so that it cannot
    // turn the arithmetic, or the masking with its result, back into a comparison and a branch.
    // SAFETY: reads of locals.
    let (a, b) = unsafe { (core::ptr::read_volatile(&a), core::ptr::read_volatile(&b)) };
    let mask = (((!a & b) | (!(a ^ b) & a.wrapping_sub(b))) as i64 >> 63) as u64;
    unsafe { core::ptr::read_volatile(&mask) }
}

/// The index of the last of the first `len` items (ascending) at or below the address searched
/// for, given `at_most(i)`, all ones when item `i` is; `None` when even the first is above it. A
/// binary search over `N` (a power of two) places, each index masked with `N - 1` so that the
/// verifier sees every access in bounds.
#[inline(always)]
fn last_at_most<const N: usize>(len: usize, at_most: impl Fn(usize) -> u64) -> Option<usize> {
    if len == 0 || at_most(0) == 0 {
        return None;
    }
    let mut base = 0;
    let mut size = N;
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        let take = below(mid as u64, len as u64) & at_most(mid & (N - 1));
        base += half & take as usize;
        size -= half;
    }
    Some(base & (N - 1))
}

/// All ones when IPv4 address `a` (as a number) is at most `x`.
#[inline(always)]
fn at_most4(a: u32, x: u32) -> u64 {
    !below(x as u64, a as u64)
}

/// The rule-set bits of `x` in one family of a sandbox's table (`len` addresses in `chunks`,
/// each beginning with its entry of `firsts`); 0 when it is not there.
#[inline(always)]
fn table_bits<A: Copy + PartialEq, const N: usize>(
    chunks: &HashMap<ChunkKey, Chunk<A, N>>,
    cgroup: u64,
    verdict: u32,
    len: usize,
    firsts: &[A; MAX_CHUNKS],
    x: A,
    at_most: impl Fn(A, A) -> u64,
) -> u64 {
    let Some(index) = last_at_most::<MAX_CHUNKS>(len.div_ceil(N), |i| at_most(firsts[i], x)) else {
        return 0;
    };
    // SAFETY: the value is only read.
    let Some(chunk) = (unsafe { chunks.get(&ChunkKey { cgroup, verdict, index: index as u32 }) }) else {
        return 0;
    };
    match last_at_most::<N>(len - index * N, |i| at_most(chunk.addrs[i], x)) {
        Some(i) if chunk.addrs[i] == x => chunk.bits[i],
        _ => 0,
    }
}

/// The rule-set bits of a single address in a sandbox's IPv4 table; 0 when it is not there.
#[inline(always)]
fn table4(cgroup: u64, verdict: u32, addr: [u8; 4]) -> u64 {
    // SAFETY: the value is only read.
    match unsafe { TABLES.get(&VerdictKey::new(cgroup, verdict)) } {
        Some(t) => table_bits(&CHUNKS4, cgroup, verdict, t.len4 as usize, &t.first4, u32::from_be_bytes(addr), at_most4),
        None => 0,
    }
}

/// All ones when IPv6 address `a` (as `[high, low]`) is at most `x`.
#[inline(always)]
fn at_most6(a: [u64; 2], x: [u64; 2]) -> u64 {
    let high_equal = below(a[0] ^ x[0], 1);
    !(below(x[0], a[0]) | (high_equal & below(x[1], a[1])))
}

/// As `table4`, for IPv6.
#[inline(always)]
fn table6(cgroup: u64, verdict: u32, addr: [u8; 16]) -> u64 {
    let half = |at: usize| {
        let mut n = 0u64;
        let mut i = 0;
        while i < 8 {
            n = (n << 8) | addr[at + i] as u64;
            i += 1;
        }
        n
    };
    // SAFETY: the value is only read.
    match unsafe { TABLES.get(&VerdictKey::new(cgroup, verdict)) } {
        Some(t) => table_bits(&CHUNKS6, cgroup, verdict, t.len6 as usize, &t.first6, [half(0), half(8)], at_most6),
        None => 0,
    }
}

/// The rule-set bits of an address: its table entry's (which include those of the blocks
/// holding it) ORed with the longest matching block's.
#[inline(always)]
fn matches4(trie: &LpmTrie<Addr4Key, u64>, cgroup: u64, verdict: u32, addr: [u8; 4], protocol: u8, port: u16) -> bool {
    let key = Key::new(96, Addr4Key { cgroup, addr, _pad: [0; 4] });
    let bits = trie.get(&key).copied().unwrap_or(0) | table4(cgroup, verdict, addr);
    bits != 0 && rule_sets_match(cgroup, verdict, bits, protocol, port)
}

#[inline(always)]
fn matches6(trie: &LpmTrie<Addr6Key, u64>, cgroup: u64, verdict: u32, addr: [u8; 16], protocol: u8, port: u16) -> bool {
    let key = Key::new(192, Addr6Key { cgroup, addr });
    let bits = trie.get(&key).copied().unwrap_or(0) | table6(cgroup, verdict, addr);
    bits != 0 && rule_sets_match(cgroup, verdict, bits, protocol, port)
}

/// An address sbx's DNS service answered, not yet expired, with a rule set that admits this.
#[inline(always)]
fn answered(cgroup: u64, addr4: [u8; 4], addr6: Option<[u8; 16]>, protocol: u8, port: u16) -> bool {
    // SAFETY (both lookups): the value is only read.
    let entry = match addr6 {
        None => unsafe { ANSWERED4.get(&Addr4Key { cgroup, addr: addr4, _pad: [0; 4] }) },
        Some(addr) => unsafe { ANSWERED6.get(&Addr6Key { cgroup, addr }) },
    };
    match entry {
        // SAFETY: a helper without arguments.
        Some(a) if unsafe { bpf_ktime_get_ns() } < a.expires => {
            rule_sets_match(cgroup, VERDICT_ALLOW, a.bits, protocol, port)
        }
        _ => false,
    }
}

/// A destination: IPv4 (IPv4-mapped IPv6 included) or IPv6, network order.
#[derive(Clone, Copy)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

impl Ip {
    /// The host's loopback: 127.0.0.0/8 and ::1. (The unspecified addresses, which the kernel
    /// sends to loopback, are made loopback addresses before anything is judged.)
    #[inline(always)]
    fn loopback(self) -> bool {
        match self {
            Ip::V4(a) => a[0] == 127,
            Ip::V6(a) => a == LOOPBACK6,
        }
    }

    /// As IPv6, IPv4 mapped.
    #[inline(always)]
    fn v6(self) -> [u8; 16] {
        match self {
            Ip::V4(a) => mapped(a),
            Ip::V6(a) => a,
        }
    }
}

/// A socket lookup's tuple: from `src`:`sport` to `dst`:`dport` (both of `dst`'s family; ports in
/// host order), and the size the helpers take for that family.
#[inline(always)]
fn tuple(src: Ip, sport: u16, dst: Ip, dport: u16) -> (bpf_sock_tuple, u32) {
    // SAFETY: plain data, for which all zeroes is valid.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    match dst {
        Ip::V4(d) => {
            let s = match src {
                Ip::V4(s) => s,
                Ip::V6(_) => [0; 4],
            };
            t.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes(s),
                daddr: u32::from_ne_bytes(d),
                sport: sport.to_be(),
                dport: dport.to_be(),
            };
            (t, 12)
        }
        Ip::V6(d) => {
            let s = match src {
                Ip::V6(s) => s,
                Ip::V4(_) => [0; 16],
            };
            let (mut saddr, mut daddr) = ([0u32; 4], [0u32; 4]);
            let mut i = 0;
            while i < 4 {
                let at = i * 4;
                saddr[i] = u32::from_ne_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
                daddr[i] = u32::from_ne_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
                i += 1;
            }
            t.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 { saddr, daddr, sport: sport.to_be(), dport: dport.to_be() };
            (t, 36)
        }
    }
}

/// The socket-local storage map, as the helpers take it.
#[inline(always)]
fn owners() -> *mut c_void {
    ptr::from_ref(&OWNERS).cast_mut().cast()
}

/// The held-destinations storage map, as the helpers take it.
#[inline(always)]
fn held_map() -> *mut c_void {
    ptr::from_ref(&HELD).cast_mut().cast()
}

/// An address's bytes as the two native words `HeldPeer` keeps.
#[inline(always)]
fn words(addr: [u8; 16]) -> [u64; 2] {
    let (high, low) = addr.split_at(8);
    [u64::from_ne_bytes(high.try_into().unwrap_or_default()), u64::from_ne_bytes(low.try_into().unwrap_or_default())]
}

/// All ones when `peer` is in use and holds `addr` at `port` (at any port, for `None`), else 0.
/// Computed, not branched on, as in `below`: a branch per entry would give the verifier a path
/// per combination of entries.
#[inline(always)]
fn held_at(peer: &HeldPeer, addr: [u64; 2], port: Option<u16>) -> u64 {
    let ports = match port {
        Some(p) => u64::from(peer.port ^ p),
        None => 0,
    };
    below((peer.addr[0] ^ addr[0]) | (peer.addr[1] ^ addr[1]) | ports | u64::from(peer.used ^ 1), 1)
}

/// Whether `addr`:`port` is one of `held`'s destinations (`addr` at any port, for `None`).
#[inline(always)]
fn holds(held: &Held, addr: [u64; 2], port: Option<u16>) -> bool {
    let mut found = 0;
    let mut i = 0;
    while i < MAX_HELD {
        found |= held_at(&held.peers[i], addr, port);
        i += 1;
    }
    found != 0
}

/// What `sbx_held` does with a destination.
const HOLD: u32 = 0;
const RELEASE: u32 = 1;

/// Holds a denied destination a UDP socket connects to (`HOLD`; false when the socket holds as
/// many as it may, and then the connect is refused), or lets go of one a hook found allowed
/// (`RELEASE`: sends there are the policy's to allow now).
#[inline(always)]
fn held(ctx: &SockAddrContext, op: u32, addr: [u8; 16], port: u16) -> bool {
    let [high, low] = words(addr);
    sbx_held(ctx.sock_addr, op | u32::from(port) << 8, high, low) != 0
}

/// `held`, as a global function verified once on its own, as `sbx_receiver_owner` is (inlined,
/// its loops multiplied the paths of every caller past the verifier's budget). `what` is the
/// operation and the port (host order) shifted by 8; the address is `high` and `low` (`words`).
#[inline(never)]
#[unsafe(no_mangle)]
fn sbx_held(ctx: *mut bpf_sock_addr, what: u32, high: u64, low: u64) -> u64 {
    let op = what & 0xff;
    let port = (what >> 8) as u16;
    let addr = [high, low];
    // SAFETY: the context's socket is valid for the program's run.
    let sk = unsafe { (*ctx).__bindgen_anon_1.sk };
    let flags = if op == HOLD { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: a zeroed value is made when missing; the storage lives as long as the socket.
    let held = unsafe { bpf_sk_storage_get(held_map(), sk.cast(), ptr::null_mut(), flags) }.cast::<Held>();
    // SAFETY: a valid map value or null.
    let Some(held) = (unsafe { held.as_mut() }) else {
        return 0;
    };
    if op == RELEASE {
        let mut i = 0;
        while i < MAX_HELD {
            let peer = &mut held.peers[i];
            peer.used &= !held_at(peer, addr, Some(port)) as u16;
            i += 1;
        }
        return 0;
    }
    if holds(held, addr, Some(port)) {
        return 1;
    }
    let mut i = 0;
    while i < MAX_HELD {
        let peer = &mut held.peers[i];
        if peer.used == 0 {
            peer.addr = addr;
            peer.port = port;
            peer.used = 1;
            return 1;
        }
        i += 1;
    }
    0
}

/// The socket the kernel would give a new TCP connection or a UDP datagram for `dst`:`port`:
/// `None` when there is none, else the cgroup id of the sandbox that created it (0 for any other
/// socket). Looked up as the receive path does (listeners and wildcard binds by how specific
/// they are), from a program of a connect, send or bind hook (`ctx`).
#[inline(always)]
fn receiver_owner(ctx: *mut bpf_sock_addr, protocol: u8, dst: Ip, port: u16) -> Option<u64> {
    let (family, high, low) = as_words(dst);
    let what = u32::from(protocol) | u32::from(port) << 8 | family << 24;
    match sbx_receiver_owner(ctx, what, high, low) {
        NO_RECEIVER => None,
        id => Some(id),
    }
}

/// An address as a global function takes it: the family (1 for IPv6) and two words, as the
/// bytes of an IPv6 address would be read into them, or an IPv4 address in the low one.
#[inline(always)]
fn as_words(addr: Ip) -> (u32, u64, u64) {
    match addr {
        Ip::V4(a) => (0, 0, u64::from(u32::from_ne_bytes(a))),
        Ip::V6(a) => {
            let (h, l) = a.split_at(8);
            (1, u64::from_ne_bytes(h.try_into().unwrap_or_default()), u64::from_ne_bytes(l.try_into().unwrap_or_default()))
        }
    }
}

/// The address `as_words` gave.
#[inline(always)]
fn from_words(family: u32, high: u64, low: u64) -> Ip {
    if family == 1 {
        let (h, l) = (high.to_ne_bytes(), low.to_ne_bytes());
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&h);
        a[8..].copy_from_slice(&l);
        Ip::V6(a)
    } else {
        Ip::V4((low as u32).to_ne_bytes())
    }
}

/// `sbx_receiver_owner`'s answer when no socket would receive. No cgroup has this id.
const NO_RECEIVER: u64 = u64::MAX;

/// `receiver_owner`, as a function of its own, global and so verified once, on its own, instead
/// of once per path through every caller (a first load of the programs took 2.9 s with it
/// inlined). Hence its shape: a global function takes the context and plain numbers only, and a
/// fixed name keeps the object the same wherever it is built (a mangled name carries a hash of
/// the checkout's path). `what` is the protocol, the port (host order) shifted by 8 and the
/// family (1 for IPv6) by 24; the address is `high` and `low` as the bytes of an IPv6 address
/// would be read into two words, or an IPv4 address in `low`.
#[inline(never)]
#[unsafe(no_mangle)]
fn sbx_receiver_owner(ctx: *mut bpf_sock_addr, what: u32, high: u64, low: u64) -> u64 {
    let protocol = what as u8;
    let port = (what >> 8) as u16;
    let dst = from_words(what >> 24, high, low);
    let (mut t, size) = tuple(Ip::V4([0; 4]), 0, dst, port);
    let ctx = ctx.cast::<c_void>();
    // SAFETY: the tuple lives on the stack for the call; the socket returned is released below.
    let sk = unsafe {
        match protocol {
            PROTO_TCP => bpf_sk_lookup_tcp(ctx, &mut t, size, CURRENT_NETNS, 0),
            PROTO_UDP => bpf_sk_lookup_udp(ctx, &mut t, size, CURRENT_NETNS, 0),
            _ => ptr::null_mut(),
        }
    };
    if sk.is_null() {
        return NO_RECEIVER;
    }
    // SAFETY: `sk` is a referenced socket; the storage is only read.
    let owner = unsafe { bpf_sk_storage_get(owners(), sk.cast(), ptr::null_mut(), 0) }.cast::<SocketOwner>();
    let id = if owner.is_null() { 0 } else { unsafe { (*owner).cgroup } };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    id
}

/// What becomes of a connect or send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allow,
    /// Allowed, and not an allowed connection to report: the command's own loopback, or a
    /// would-be denial that audit reported and lets through.
    Quiet,
    Deny,
    /// Sent to sbx's DNS service instead (allowlist mode, port 53, IPv4).
    ToDns,
}

/// The verdict for a destination (an unspecified address already made loopback).
#[inline(always)]
fn verdict(ctx: *mut bpf_sock_addr, policy: &Policy, cgroup: u64, addr: Ip, protocol: u8, port: u16) -> Outcome {
    let loopback = addr.loopback();
    // Only the command's own sockets: the kernel's lookup finds the socket a connection to this
    // destination would reach, and it must be one the sandbox created.
    let own = loopback && receiver_owner(ctx, protocol, addr, port) == Some(cgroup);
    // With FLAG_DNS (sbx learn) sbx's service sees every question in mode open too.
    let gated = policy.mode == MODE_ALLOWLIST || (policy.mode == MODE_OPEN && policy.flags & FLAG_DNS != 0);
    if gated && port == 53 && !own {
        // DNS over IPv6 would pass sbx's DNS service by: refused, as the nftables backend does.
        match addr {
            Ip::V4(_) if policy.dns_port != 0 => return Outcome::ToDns,
            Ip::V6(_) => return Outcome::Deny,
            Ip::V4(_) => {}
        }
    }
    if own {
        return Outcome::Quiet;
    }
    if policy.mode == MODE_NONE {
        return Outcome::Deny;
    }
    let denied = match addr {
        Ip::V4(a) => matches4(&DENY4, cgroup, VERDICT_DENY, a, protocol, port),
        Ip::V6(a) => matches6(&DENY6, cgroup, VERDICT_DENY, a, protocol, port),
    };
    if denied {
        return Outcome::Deny;
    }
    if policy.mode == MODE_OPEN && !loopback {
        return Outcome::Allow;
    }
    let allowed = match addr {
        Ip::V4(a) => matches4(&ALLOW4, cgroup, VERDICT_ALLOW, a, protocol, port) || answered(cgroup, a, None, protocol, port),
        Ip::V6(a) => matches6(&ALLOW6, cgroup, VERDICT_ALLOW, a, protocol, port) || answered(cgroup, [0; 4], Some(a), protocol, port),
    };
    if allowed { Outcome::Allow } else { Outcome::Deny }
}

/// In audit (`FLAG_AUDIT`) a connect or send the policy denies is reported as a would-be denial
/// and let through; sbx's own DNS redirect and everything else stand as they are.
#[inline(always)]
fn audited(policy: &Policy, outcome: Outcome, cgroup: u64, hook: u8, addr: [u8; 16], protocol: u8, port: u16) -> Outcome {
    if outcome != Outcome::Deny || policy.flags & FLAG_AUDIT == 0 {
        return outcome;
    }
    report(cgroup, hook, addr, protocol, port, VERDICT_DENIED, 1);
    Outcome::Quiet
}

#[inline(always)]
fn report(cgroup: u64, hook: u8, addr: [u8; 16], protocol: u8, port: u16, verdict: u8, audit: u8) {
    let [high, low] = words(addr);
    let what = u64::from(hook) | u64::from(protocol) << 8 | u64::from(port) << 16 | u64::from(verdict) << 32 | u64::from(audit) << 40;
    sbx_report(cgroup, what, high, low);
}

/// `report`, as a global function verified once on its own (as `sbx_held` is): inlined, each
/// report multiplied the paths after it. `what` is the hook, the protocol shifted by 8, the port
/// (host order) by 16, the verdict by 32 and audit by 40; the address is `high` and `low`
/// (`words`).
#[inline(never)]
#[unsafe(no_mangle)]
fn sbx_report(cgroup: u64, what: u64, high: u64, low: u64) -> u64 {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        match LOST.get_ptr_mut(&cgroup) {
            // SAFETY: a valid map value; a count two CPUs race on may miss one, which is fine.
            Some(lost) => unsafe { *lost += 1 },
            None => {
                // On the stack: `&1` would be a constant in .rodata, which the loader would
                // take for a map of its own.
                let one: u64 = 1;
                let _ = LOST.insert(&cgroup, &one, 0);
            }
        }
        return 0;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let (h, l) = (high.to_ne_bytes(), low.to_ne_bytes());
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&h);
    addr[8..].copy_from_slice(&l);
    entry.write(Event {
        cgroup,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        addr,
        port: (what >> 16) as u16,
        protocol: (what >> 8) as u8,
        hook: what as u8,
        comm,
        // SAFETY: a helper without arguments.
        time: unsafe { bpf_ktime_get_ns() },
        verdict: (what >> 32) as u8,
        audit: (what >> 40) as u8,
        _pad: [0; 6],
    });
    entry.submit(0);
    1
}

#[inline(always)]
fn mapped(addr4: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr4[0], addr4[1], addr4[2], addr4[3]]
}

/// Remembers, for a datagram an unconnected UDP socket is allowed to send, that replies from its
/// destination may come back (see `ingress`). True when the peer was not remembered, or its
/// entry had expired: only such a send is reported as allowed (`FLAG_ALLOWED`), so that a stream
/// of datagrams to one peer is one event, not one per datagram.
#[inline(always)]
fn remember_peer(ctx: &SockAddrContext, addr: [u8; 16], port: u16) -> bool {
    let [high, low] = words(addr);
    sbx_remember_peer(ctx.sock_addr, u32::from(port), high, low) != 0
}

/// `remember_peer`, as a global function verified once on its own (as `sbx_held` is). The peer
/// is `port` (host order) at the address `high`, `low` (`words`).
#[inline(never)]
#[unsafe(no_mangle)]
fn sbx_remember_peer(ctx: *mut bpf_sock_addr, port: u32, high: u64, low: u64) -> u64 {
    // SAFETY: the context's socket is valid for the program's run.
    let local_port = unsafe { (*(*ctx).__bindgen_anon_1.sk).src_port } as u16;
    let (h, l) = (high.to_ne_bytes(), low.to_ne_bytes());
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&h);
    addr[8..].copy_from_slice(&l);
    let key = PeerKey { cgroup: cgroup(), addr, port: port as u16, local_port, _pad: [0; 4] };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is only read.
    let fresh = match unsafe { PEERS.get(&key) } {
        Some(expires) => now >= *expires,
        None => true,
    };
    let _ = PEERS.insert(&key, &(now + PEER_TTL_NS), 0);
    u64::from(fresh)
}

/// For a UDP socket's connect or send (`connect`) to `addr`:`port`: false when a denied connect
/// is to succeed, its destination held for `egress`; true when the verdict stands (a refused
/// connect when the socket holds all it may). An allowed destination is let go of.
#[inline(always)]
fn stands(ctx: &SockAddrContext, connect: bool, outcome: Outcome, addr: [u8; 16], port: u16) -> bool {
    match outcome {
        Outcome::Deny => !(connect && held(ctx, HOLD, addr, port)),
        Outcome::Allow | Outcome::Quiet | Outcome::ToDns => {
            held(ctx, RELEASE, addr, port);
            true
        }
    }
}

/// Judges an IPv4 destination, sending DNS to sbx's service in allowlist mode.
#[inline(always)]
fn judge4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let cgroup = cgroup();
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(policy) = (unsafe { POLICIES.get(&cgroup) }) else {
        return DENY; // not a sandbox sbx knows: fail closed
    };
    let mut addr4 = sa.user_ip4.to_ne_bytes();
    if addr4 == [0; 4] {
        // The kernel sends to 0.0.0.0 on loopback; where it goes is what is judged.
        addr4 = [127, 0, 0, 1];
        sa.user_ip4 = u32::from_ne_bytes(addr4);
    }
    let port = u16::from_be(sa.user_port as u16);
    let protocol = sa.protocol as u8;
    let outcome = verdict(ctx.sock_addr, policy, cgroup, Ip::V4(addr4), protocol, port);
    let outcome = audited(policy, outcome, cgroup, hook, mapped(addr4), protocol, port);
    if protocol == PROTO_UDP && !stands(ctx, hook == HOOK_CONNECT4, outcome, mapped(addr4), port) {
        return ALLOW;
    }
    let (addr, to) = match outcome {
        Outcome::Deny => {
            report(cgroup, hook, mapped(addr4), protocol, port, VERDICT_DENIED, 0);
            return DENY;
        }
        Outcome::ToDns => {
            sa.user_ip4 = policy.dns_ip4.to_be();
            sa.user_port = u32::from(policy.dns_port.to_be());
            (policy.dns_ip4.to_be_bytes(), policy.dns_port)
        }
        Outcome::Allow | Outcome::Quiet => (addr4, port),
    };
    let first = hook != HOOK_SENDMSG4 || remember_peer(ctx, mapped(addr), to);
    if first && outcome == Outcome::Allow && policy.flags & FLAG_ALLOWED != 0 {
        report(cgroup, hook, mapped(addr4), protocol, port, VERDICT_ALLOWED, 0);
    }
    ALLOW
}

/// Judges an IPv6 destination; an IPv4-mapped one (`::ffff:a.b.c.d`, a dual-stack socket
/// reaching IPv4) is judged as the IPv4 address it is.
#[inline(always)]
fn judge6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let cgroup = cgroup();
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(policy) = (unsafe { POLICIES.get(&cgroup) }) else {
        return DENY;
    };
    let words = sa.user_ip6;
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let bytes = words[i].to_ne_bytes();
        addr[i * 4] = bytes[0];
        addr[i * 4 + 1] = bytes[1];
        addr[i * 4 + 2] = bytes[2];
        addr[i * 4 + 3] = bytes[3];
        i += 1;
    }
    let port = u16::from_be(sa.user_port as u16);
    let protocol = sa.protocol as u8;
    // The kernel sends to :: (and ::ffff:0.0.0.0) on loopback; where it goes is what is judged.
    if addr == [0; 16] {
        addr = LOOPBACK6;
        sa.user_ip6[3] = u32::from_ne_bytes([0, 0, 0, 1]);
    }
    let is_mapped = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    if is_mapped && addr[12..] == [0; 4] {
        addr[12] = 127;
        addr[15] = 1;
        sa.user_ip6[3] = u32::from_ne_bytes([127, 0, 0, 1]);
    }
    let dst = if is_mapped { Ip::V4([addr[12], addr[13], addr[14], addr[15]]) } else { Ip::V6(addr) };
    let outcome = verdict(ctx.sock_addr, policy, cgroup, dst, protocol, port);
    let outcome = audited(policy, outcome, cgroup, hook, addr, protocol, port);
    if protocol == PROTO_UDP && !stands(ctx, hook == HOOK_CONNECT6, outcome, addr, port) {
        return ALLOW;
    }
    let (peer, to) = match outcome {
        Outcome::Deny => {
            report(cgroup, hook, addr, protocol, port, VERDICT_DENIED, 0);
            return DENY;
        }
        Outcome::ToDns => {
            sa.user_ip6[3] = policy.dns_ip4.to_be();
            sa.user_port = u32::from(policy.dns_port.to_be());
            (mapped(policy.dns_ip4.to_be_bytes()), policy.dns_port)
        }
        Outcome::Allow | Outcome::Quiet => (addr, port),
    };
    let first = hook != HOOK_SENDMSG6 || remember_peer(ctx, peer, to);
    if first && outcome == Outcome::Allow && policy.flags & FLAG_ALLOWED != 0 {
        report(cgroup, hook, addr, protocol, port, VERDICT_ALLOWED, 0);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge4(&ctx, HOOK_CONNECT4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge4(&ctx, HOOK_SENDMSG4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge6(&ctx, HOOK_CONNECT6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge6(&ctx, HOOK_SENDMSG6)
}

/// A bind to an address and port where the kernel already delivers to a socket of anyone else
/// (the host, another sandbox) is refused: it could only succeed by sharing the port
/// (`SO_REUSEPORT`, or `SO_REUSEADDR` for UDP), and then the kernel, not the lookups above,
/// would choose between the two sockets.
#[inline(always)]
fn judge_bind(ctx: &SockAddrContext, addr: Ip, hook: u8) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let protocol = sa.protocol as u8;
    if port == 0 {
        return ALLOW; // the kernel picks a free port
    }
    let cgroup = cgroup();
    match receiver_owner(ctx.sock_addr, protocol, addr, port) {
        Some(owner) if owner != cgroup => {
            report(cgroup, hook, addr.v6(), protocol, port, VERDICT_DENIED, 0);
            DENY
        }
        _ => ALLOW,
    }
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let addr = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    judge_bind(&ctx, Ip::V4(addr), HOOK_BIND4)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let words = unsafe { (*ctx.sock_addr).user_ip6 };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let bytes = words[i].to_ne_bytes();
        addr[i * 4] = bytes[0];
        addr[i * 4 + 1] = bytes[1];
        addr[i * 4 + 2] = bytes[2];
        addr[i * 4 + 3] = bytes[3];
        i += 1;
    }
    let is_mapped = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    let ip = if is_mapped { Ip::V4([addr[12], addr[13], addr[14], addr[15]]) } else { Ip::V6(addr) };
    judge_bind(&ctx, ip, HOOK_BIND6)
}

/// Raw and packet sockets would send past every hook above, and ICMP (ping) sockets are not
/// seen by them either: none may be created in a sandbox.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { &*ctx.sock };
    let icmp = (sk.family == AF_INET && sk.protocol == IPPROTO_ICMP) || (sk.family == AF_INET6 && sk.protocol == IPPROTO_ICMPV6);
    if sk.type_ == SOCK_RAW || sk.family == AF_PACKET || icmp {
        report(cgroup(), HOOK_SOCK_CREATE, [0; 16], sk.protocol as u8, 0, VERDICT_DENIED, 0);
        return DENY;
    }
    // The socket is the sandbox's: what the own-socket lookups and the inbound program check.
    let mut owner = SocketOwner { cgroup: cgroup() };
    // SAFETY: the context is the new socket; `owner` is a map value on the stack for the call.
    unsafe {
        bpf_sk_storage_get(owners(), ctx.sock.cast(), ptr::from_mut(&mut owner).cast(), u64::from(BPF_SK_STORAGE_GET_F_CREATE))
    };
    ALLOW
}

/// Reads `N` bytes of the packet at `offset` (from its network header).
#[inline(always)]
fn bytes<const N: usize>(ctx: &SkBuffContext, offset: usize) -> Option<[u8; N]> {
    ctx.load::<[u8; N]>(offset).ok()
}

/// Whether a packet delivered to a socket of the sandbox may be: everything but new inbound
/// traffic. A listening TCP socket takes only the command's own connections (over loopback, from
/// a socket created in the sandbox); an unconnected UDP socket takes datagrams from the
/// command's own sockets and replies from peers it sent to; connected sockets take what the
/// kernel gives them (their peer was judged when they connected), except from a held
/// destination, which is judged as for an unconnected socket (nothing was sent to it). Anything
/// else is dropped, as the nftables backend drops new inbound connections.
#[inline(always)]
fn admit(ctx: &SkBuffContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is the receiving socket (ingress programs run for full sockets only).
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a full socket's fields are readable.
    let (protocol, state, connected) = unsafe { ((*sk).protocol, (*sk).state, (*sk).dst_port != 0) };
    let held = if connected && protocol as u8 == PROTO_UDP {
        // SAFETY: `sk` is a full socket; the storage is only read.
        unsafe { bpf_sk_storage_get(held_map(), sk.cast(), ptr::null_mut(), 0) }.cast::<Held>()
    } else {
        ptr::null_mut()
    };
    match protocol as u8 {
        PROTO_TCP if state != TCP_LISTEN => return true,
        PROTO_UDP if connected && held.is_null() => return true,
        PROTO_TCP | PROTO_UDP => {}
        _ => return false,
    }
    // SAFETY: reads of the context.
    let (cgroup, family, ifindex) = unsafe { (bpf_skb_cgroup_id(skb), (*skb).protocol, (*skb).ifindex) };
    let (src, dst, l4) = if family == u32::from(ETH_P_IP.to_be()) {
        let Some([vihl]) = bytes::<1>(ctx, 0) else { return false };
        let (Some(s), Some(d)) = (bytes::<4>(ctx, 12), bytes::<4>(ctx, 16)) else { return false };
        (Ip::V4(s), Ip::V4(d), ((vihl & 0x0f) as usize) * 4)
    } else if family == u32::from(ETH_P_IPV6.to_be()) {
        // Only a transport header right after the fixed header; extension headers are dropped.
        let Some([next]) = bytes::<1>(ctx, 6) else { return false };
        if next != protocol as u8 {
            return false;
        }
        let (Some(s), Some(d)) = (bytes::<16>(ctx, 8), bytes::<16>(ctx, 24)) else { return false };
        (Ip::V6(s), Ip::V6(d), 40)
    } else {
        return false;
    };
    let Some([s0, s1, d0, d1]) = bytes::<4>(ctx, l4) else { return false };
    let (sport, dport) = (u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1]));
    // SAFETY: a valid map value or null.
    if let Some(held) = unsafe { held.as_ref() }
        && !holds(held, words(src.v6()), Some(sport))
    {
        return true;
    }
    if ifindex == LOOPBACK_IFINDEX && own_sender(ctx, protocol as u8, src, sport, dst, dport, cgroup) {
        return true;
    }
    if protocol as u8 != PROTO_UDP {
        return false;
    }
    let key = PeerKey { cgroup, addr: src.v6(), port: sport, local_port: dport, _pad: [0; 4] };
    // SAFETY: the value is only read.
    match unsafe { PEERS.get(&key) } {
        // SAFETY: a helper without arguments.
        Some(expires) => (unsafe { bpf_ktime_get_ns() }) < *expires,
        None => false,
    }
}

/// Whether the socket that sent a packet from `src`:`sport` to `dst`:`dport` over loopback is
/// one the sandbox created: the socket the kernel holds for that exact pair (a connection's, or
/// for UDP the socket bound there), by its cgroup.
#[inline(always)]
fn own_sender(ctx: &SkBuffContext, protocol: u8, src: Ip, sport: u16, dst: Ip, dport: u16, cgroup: u64) -> bool {
    // The sender's side: a packet to it would come from `dst`:`dport` to `src`:`sport`.
    let (mut t, size) = tuple(dst, dport, src, sport);
    let skb: *mut c_void = ctx.skb.skb.cast();
    // SAFETY: the tuple lives on the stack for the call; the socket returned is released below.
    let sk = unsafe {
        if protocol == PROTO_TCP {
            bpf_sk_lookup_tcp(skb, &mut t, size, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(skb, &mut t, size, CURRENT_NETNS, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is a referenced full socket.
    let (state, owner) = unsafe { ((*sk).state, bpf_sk_cgroup_id(sk.cast())) };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    // A TCP sender is a connection, never a listener (the lookup falls back to listeners).
    owner == cgroup && !(protocol == PROTO_TCP && state == TCP_LISTEN)
}

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    i32::from(admit(&ctx))
}

/// Whether a datagram leaving a socket of the sandbox goes to a destination the socket holds
/// (see `Held`): the sends a connected UDP socket makes without an address, which no send hook
/// sees. Reported once per datagram, as a refused `sendto` is once per call.
#[inline(always)]
fn refused(ctx: &SkBuffContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is the sending socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    // SAFETY: a full socket's fields are readable.
    if sk.is_null() || unsafe { (*sk).protocol } != u32::from(PROTO_UDP) {
        return false;
    }
    // SAFETY: `sk` is a full socket; the storage is only read.
    let held = unsafe { bpf_sk_storage_get(held_map(), sk.cast(), ptr::null_mut(), 0) }.cast::<Held>();
    // SAFETY: a valid map value or null.
    let Some(held) = (unsafe { held.as_ref() }) else {
        return false;
    };
    // SAFETY: a read of the context.
    let family = unsafe { (*skb).protocol };
    let (dst, l4) = if family == u32::from(ETH_P_IP.to_be()) {
        let Some([vihl]) = bytes::<1>(ctx, 0) else { return true };
        let Some(d) = bytes::<4>(ctx, 16) else { return true };
        (mapped(d), Some(((vihl & 0x0f) as usize) * 4))
    } else if family == u32::from(ETH_P_IPV6.to_be()) {
        let Some([next]) = bytes::<1>(ctx, 6) else { return true };
        let Some(d) = bytes::<16>(ctx, 24) else { return true };
        // Extension headers (a routing header) before UDP: the port is not where it is looked
        // for, and the address alone decides.
        (d, (next == PROTO_UDP).then_some(40))
    } else {
        return false;
    };
    let port = match l4 {
        Some(l4) => {
            let Some([d0, d1]) = bytes::<2>(ctx, l4 + 2) else { return true };
            Some(u16::from_be_bytes([d0, d1]))
        }
        None => None,
    };
    if !holds(held, words(dst), port) {
        return false;
    }
    // SAFETY: a read of the context.
    report(unsafe { bpf_skb_cgroup_id(skb) }, HOOK_EGRESS, dst, PROTO_UDP, port.unwrap_or(0), VERDICT_DENIED, 0);
    true
}

/// IPv4 options that route a packet through other hosts: loose and strict source routing.
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
/// IPv6 extension headers: hop-by-hop and destination options (which may come before a routing
/// header), and the routing header.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_ROUTING: u8 = 43;

/// Whether a packet of the sandbox carries a source route. The kernel then addresses it to the
/// route's first hop, while the connect and send hooks were shown its final destination: an
/// IPv6 segment routing header needs no privilege (IPV6_RTHDR), so without this any allowed
/// destination would carry the command's traffic to any address it names as a hop. IPv4 source
/// routes need CAP_NET_RAW, which the command never has; they are refused all the same, in case
/// a kernel lets them through. No client needs either.
#[inline(always)]
fn source_routed(ctx: &SkBuffContext, family: u32) -> bool {
    if family == u32::from(ETH_P_IP.to_be()) {
        let Some([vihl]) = bytes::<1>(ctx, 0) else { return true };
        let end = ((vihl & 0x0f) as usize) * 4;
        let mut at = 20;
        // At most 40 bytes of options: 40 one-byte options, fewer longer ones.
        for _ in 0..40 {
            if at >= end {
                return false;
            }
            let Some([kind]) = bytes::<1>(ctx, at) else { return true };
            match kind {
                0 => return false,
                1 => at += 1,
                IPOPT_LSRR | IPOPT_SSRR => return true,
                _ => {
                    let Some([len]) = bytes::<1>(ctx, at + 1) else { return true };
                    if len < 2 {
                        return true;
                    }
                    at += len as usize;
                }
            }
        }
        false
    } else if family == u32::from(ETH_P_IPV6.to_be()) {
        let Some([mut next]) = bytes::<1>(ctx, 6) else { return true };
        let mut at = 40;
        // Hop-by-hop, then destination options, then the routing header (RFC 8200, 4.1).
        for _ in 0..3 {
            match next {
                IPV6_ROUTING => return true,
                IPV6_HOPOPTS | IPV6_DSTOPTS => {
                    let Some([header_next, len]) = bytes::<2>(ctx, at) else { return true };
                    next = header_next;
                    at += (len as usize + 1) * 8;
                }
                _ => return false,
            }
        }
        // Deeper chains are nothing a socket sends.
        true
    } else {
        false
    }
}

/// The packet's destination, as its header has it.
#[inline(always)]
fn header_destination(ctx: &SkBuffContext, family: u32) -> [u8; 16] {
    if family == u32::from(ETH_P_IP.to_be()) {
        bytes::<4>(ctx, 16).map(mapped).unwrap_or([0; 16])
    } else {
        bytes::<16>(ctx, 24).unwrap_or([0; 16])
    }
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the context.
    let family = unsafe { (*skb).protocol };
    if source_routed(&ctx, family) {
        // SAFETY: a read of the context.
        let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
        report(cgroup, HOOK_EGRESS, header_destination(&ctx, family), sending_protocol(&ctx), 0, VERDICT_DENIED, 0);
        return DENY;
    }
    i32::from(!refused(&ctx))
}

/// The IP protocol of the socket that sent the packet (0 if there is none).
#[inline(always)]
fn sending_protocol(ctx: &SkBuffContext) -> u8 {
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: `sk` is the sending socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: a full socket's fields are readable.
    unsafe { (*sk).protocol as u8 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
