//! Types shared by sbx (userspace) and its eBPF programs: map keys, map values and events.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so both sides agree on the
//! layout byte for byte; userspace-only trait impls (aya's `Pod`) sit behind the `user` feature.
//!
//! A sandbox is a cgroup; every map is keyed by the sandbox cgroup's id, so one set of loaded
//! programs serves every sandbox on the machine.
#![no_std]

/// `mode` of a [`Policy`].
pub const MODE_NONE: u8 = 0;
pub const MODE_ALLOWLIST: u8 = 1;
pub const MODE_OPEN: u8 = 2;

/// `protocol` of a [`RuleSet`]: IP protocol numbers, and 0 for any.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Rule sets per verdict and sandbox: the bits of an address entry's value.
pub const MAX_RULE_SETS: usize = 64;
/// Port ranges per rule set; a rule set of the Plan with more is split over several.
pub const MAX_PORT_RANGES: usize = 16;

/// The policy of one sandbox, by cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Host-order IPv4 address and port of sbx's DNS service for this sandbox (allowlist mode):
    /// DNS the command sends anywhere is sent there instead. Zero when there is none.
    pub dns_ip4: u32,
    pub dns_port: u16,
    pub mode: u8,
    /// `FLAG_*` bits: what the sandbox records and enforces beyond its rules.
    pub flags: u8,
}

/// Refuse nothing: a would-be denial is reported (as an [`Event`] with `audit` set) and let
/// through.
pub const FLAG_AUDIT: u8 = 1;
/// Report allowed connects and sends too ([`VERDICT_ALLOWED`]).
pub const FLAG_ALLOWED: u8 = 2;
/// Send DNS to sbx's service in mode open too, as in mode allowlist.
pub const FLAG_DNS: u8 = 4;

/// One rule set: a protocol and up to [`MAX_PORT_RANGES`] inclusive port ranges. The addresses
/// it applies to are the address entries whose value has its bit set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub protocol: u8,
    pub ranges: u8,
    pub _pad: [u8; 2],
    /// `(first, last)`, host order; only the first `ranges` are used.
    pub ports: [[u16; 2]; MAX_PORT_RANGES],
}

/// The rule sets of one sandbox and verdict: bit `i` of an address entry's value stands for
/// `sets[i]`. One map entry, so that a connect looks them up once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSets {
    pub sets: [RuleSet; MAX_RULE_SETS],
}

pub const VERDICT_ALLOW: u32 = 0;
pub const VERDICT_DENY: u32 = 1;

/// A sandbox (its cgroup id) and a verdict: the key of its [`RuleSets`] and its [`Table`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictKey {
    pub cgroup: u64,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`].
    pub verdict: u32,
    pub _pad: u32,
}

impl VerdictKey {
    pub const fn new(cgroup: u64, verdict: u32) -> Self {
        VerdictKey {
            cgroup,
            verdict,
            _pad: 0,
        }
    }
}

/// Data of an LPM trie key for IPv4 address entries: the cgroup id (always matched whole) then
/// the address in network order. The trie's prefix length counts bits from the cgroup id on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr4Key {
    pub cgroup: u64,
    pub addr: [u8; 4],
    pub _pad: [u8; 4],
}

/// As [`Addr4Key`], for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr6Key {
    pub cgroup: u64,
    pub addr: [u8; 16],
}

/// Single addresses (not blocks) of one sandbox and verdict are kept in a sorted table per
/// family, which the programs binary-search: a directory ([`Table`]) and chunks of ascending
/// addresses ([`Chunk4`], [`Chunk6`]). Most entries of large policies are single addresses, and
/// 10,000 of them are then eleven map entries to write and remove instead of 10,000. Blocks, and
/// addresses beyond a table's capacity, go to the LPM tries.
pub const CHUNK4: usize = 1024;
pub const CHUNK6: usize = 256;
/// Chunks per table: a sandbox's table holds 65,536 IPv4 or 16,384 IPv6 addresses per verdict.
pub const MAX_CHUNKS: usize = 64;

/// Key of a chunk: the table's, and the chunk's place in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkKey {
    pub cgroup: u64,
    pub verdict: u32,
    pub index: u32,
}

/// The directory of one sandbox's tables for one verdict. Chunk `i` of a family holds its
/// addresses `i * CHUNK..`, so every chunk but the last is full.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// How many addresses each family's table holds.
    pub len4: u32,
    pub len6: u32,
    /// The first address of each IPv4 chunk, as a number (`u32::from(Ipv4Addr)`).
    pub first4: [u32; MAX_CHUNKS],
    /// The first address of each IPv6 chunk, as its high and low halves (see [`Chunk6`]).
    pub first6: [[u64; 2]; MAX_CHUNKS],
}

/// Up to `N` single addresses of a table, ascending, and the rule-set bits of each (those of the
/// blocks that hold it included).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<A, const N: usize> {
    pub addrs: [A; N],
    pub bits: [u64; N],
}

/// IPv4 addresses as numbers (`u32::from(Ipv4Addr)`).
pub type Chunk4 = Chunk<u32, CHUNK4>;
/// IPv6 addresses as `[high, low]`, the big-endian halves read as numbers, so that the pairs
/// sort as the addresses do.
pub type Chunk6 = Chunk<[u64; 2], CHUNK6>;

/// An address answered by sbx's DNS service for an allowed name (keyed by [`Addr4Key`] or
/// [`Addr6Key`] with the full address): reachable with the rule sets of `bits` until
/// `expires`, in `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` reads).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub bits: u64,
    pub expires: u64,
}

/// The value every socket created in a sandbox carries in its own storage (a socket-local
/// storage map): the id of the sandbox's cgroup. A destination is the command's own when the
/// socket the kernel would deliver to there carries its sandbox's id: the kernel's own socket
/// lookup decides, not the addresses and ports the command bound.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub cgroup: u64,
}

/// Destinations the policy denies that a UDP socket of a sandbox was connected to anyway, in the
/// socket's own storage (a socket-local storage map, made at the first such connect). A UDP
/// connect sends nothing, and C libraries and Go connect a UDP socket to every candidate address
/// to choose among them (RFC 6724), as on a real network: so the connect succeeds and what is
/// refused is a send. A send on a connected socket passes no send hook; the egress program
/// refuses every datagram of the socket to a destination held here.
///
/// Entries are only added while denied, and leave only when a hook finds their destination
/// allowed: a connect hook runs before the kernel connects, and not under the same lock, so two
/// connects racing on one socket may leave it connected to either destination, and each must
/// be here while the socket can be connected to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub peers: [HeldPeer; MAX_HELD],
}

/// Held destinations per socket; a connect to one more is refused, as a TCP connect is.
pub const MAX_HELD: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldPeer {
    /// The address's 16 bytes read as two native words (IPv4 as IPv4-mapped IPv6,
    /// `::ffff:a.b.c.d`): compared a word at a time.
    pub addr: [u64; 2],
    /// Host order.
    pub port: u16,
    /// 1 for an entry in use, else 0.
    pub used: u16,
    pub _pad: u32,
}

/// A peer an unconnected UDP socket of a sandbox sent a datagram to, keyed with that socket's
/// local port: datagrams from the peer to that port are replies, which the inbound program
/// admits until the value (`CLOCK_MONOTONIC` nanoseconds) passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub cgroup: u64,
    /// The peer's address; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// The peer's port and the local port, host order.
    pub port: u16,
    pub local_port: u16,
    pub _pad: [u8; 4],
}

/// How long a peer stays admitted after the last datagram sent to it (conntrack keeps a UDP flow
/// that has seen replies for 120 s by default; the nftables backend follows conntrack).
pub const PEER_TTL_NS: u64 = 120 * 1_000_000_000;

/// The names of the programs' maps (their statics in sbx-ebpf). sbx pins each of them, and
/// refuses an object whose maps are not exactly these.
pub const MAPS: [&str; 16] = [
    "ANSWERED4",
    "ANSWERED6",
    "POLICIES",
    "RULE_SETS",
    "ALLOW4",
    "DENY4",
    "ALLOW6",
    "DENY6",
    "TABLES",
    "CHUNKS4",
    "CHUNKS6",
    "PEERS",
    "OWNERS",
    "HELD",
    "EVENTS",
    "LOST",
];

/// The maps whose entries sbx writes under a sandbox's cgroup id, and removes when the sandbox
/// ends (the others: socket-local storage, which goes with the sockets, and the event ring).
pub const SANDBOX_MAPS: [&str; 13] = [
    "POLICIES",
    "RULE_SETS",
    "ALLOW4",
    "DENY4",
    "ALLOW6",
    "DENY6",
    "TABLES",
    "CHUNKS4",
    "CHUNKS6",
    "PEERS",
    "ANSWERED4",
    "ANSWERED6",
    "LOST",
];

/// The hook that refused something.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_SOCK_CREATE: u8 = 5;
pub const HOOK_BIND4: u8 = 6;
pub const HOOK_BIND6: u8 = 7;
/// A datagram a connected UDP socket sent to a held destination (see [`Held`]).
pub const HOOK_EGRESS: u8 = 8;

/// `verdict` of an [`Event`].
pub const VERDICT_DENIED: u8 = 0;
pub const VERDICT_ALLOWED: u8 = 1;

/// A refusal (or, with [`FLAG_AUDIT`], a would-be refusal; with [`FLAG_ALLOWED`], an allowed
/// connect or send), reported to sbx through a ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub cgroup: u64,
    pub pid: u32,
    /// IPv4 destinations as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    pub port: u16,
    pub protocol: u8,
    pub hook: u8,
    pub comm: [u8; 16],
    /// When, in `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` reads).
    pub time: u64,
    /// [`VERDICT_DENIED`] or [`VERDICT_ALLOWED`].
    pub verdict: u8,
    /// 1 for a denial that audit let through, else 0.
    pub audit: u8,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
impl Event {
    /// The event at the start of `bytes` (as the ring buffer or a spool file holds it), if
    /// `bytes` holds a whole one.
    pub fn read(bytes: &[u8]) -> Option<Event> {
        (bytes.len() >= core::mem::size_of::<Event>()).then(|| {
            // SAFETY: `bytes` holds at least one Event's bytes, read unaligned; Event is plain
            // data, valid for any bit pattern (see the `Pod` implementations below).
            unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) }
        })
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY (all): plain `#[repr(C)]` data with explicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for Policy {}
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for RuleSets {}
    unsafe impl aya::Pod for Addr4Key {}
    unsafe impl aya::Pod for Addr6Key {}
    unsafe impl aya::Pod for VerdictKey {}
    unsafe impl aya::Pod for ChunkKey {}
    unsafe impl aya::Pod for Table {}
    unsafe impl aya::Pod for Chunk4 {}
    unsafe impl aya::Pod for Chunk6 {}
    unsafe impl aya::Pod for SocketOwner {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for Answered {}
    unsafe impl aya::Pod for Event {}
}
