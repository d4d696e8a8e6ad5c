//! The eBPF backend: the command stays in the host's network stack, in a cgroup of its own, and
//! cgroup programs judge each connect, unconnected send, bind and socket creation, the sends of
//! UDP sockets connected to a denied destination, and every packet delivered to the command's
//! sockets (inbound).
//!
//! Loading the programs (parsing the kernel's BTF, probing features, the verifier) costs about
//! 0.35 s, so it is done once: programs and maps are pinned in a bpffs sbx mounts at `/run/sbx/bpf`, under a
//! directory named after the object's hash. Each sandbox then only creates a cgroup, attaches
//! the pinned programs to it through bpf links (closing them detaches; a killed sbx leaves no
//! attachment), and writes its policy into the maps under its cgroup id. `sbx gc --all` removes
//! the pinned programs and maps and the mount.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, Map, MapData};
use aya::programs::{CgroupSkb, CgroupSock, CgroupSockAddr};
use ipnet::IpNet;
use sbx_common::{
    Addr4Key, Addr6Key, Answered, Chunk, Chunk4, Chunk6, ChunkKey, MAX_CHUNKS, MAX_PORT_RANGES,
    MAX_RULE_SETS, MODE_ALLOWLIST, MODE_NONE, MODE_OPEN, PROTO_ANY, PROTO_TCP, PROTO_UDP, PeerKey,
    Policy, RuleSet, RuleSets, Table, VERDICT_ALLOW, VERDICT_DENY, VerdictKey,
};

use super::{Admit, Backend, Denial, Enforced, Placement};
use crate::plan::{Plan, RuleSet as PlanRuleSet};
use crate::policy::{Mode, Ports, Protocol};
use crate::state::{Locked, STATE_DIR};
use crate::sys::bpf::{self, AttachType};
use crate::sys::{Step, SysError, cgroup};

static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/sbx.bpf.o");

const SOCK_ADDR_PROGRAMS: [(&str, AttachType); 6] = [
    ("connect4", AttachType::Connect4),
    ("connect6", AttachType::Connect6),
    ("sendmsg4", AttachType::SendMsg4),
    ("sendmsg6", AttachType::SendMsg6),
    ("bind4", AttachType::Bind4),
    ("bind6", AttachType::Bind6),
];
const SOCK_PROGRAMS: [(&str, AttachType); 1] = [("sock_create", AttachType::SockCreate)];
const SKB_PROGRAMS: [(&str, AttachType); 2] = [
    ("ingress", AttachType::Ingress),
    ("egress", AttachType::Egress),
];
/// How many programs sbx pins.
pub const PROGRAMS: usize = SOCK_ADDR_PROGRAMS.len() + SOCK_PROGRAMS.len() + SKB_PROGRAMS.len();
/// The maps sbx pins, each of a fixed maximum size (`OWNERS` and `HELD` are socket-local
/// storage: their entries live and die with the sockets of sandboxes).
pub use sbx_common::MAPS;

/// The bpffs where sbx pins its programs and maps.
pub fn bpf_dir() -> PathBuf {
    Path::new(STATE_DIR).join("bpf")
}

/// The pins of this build of sbx: a directory per object, so that two versions of sbx never
/// share maps whose layout differs.
fn pins() -> PathBuf {
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| {
        OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    });
    bpf_dir().join(format!("{hash:016x}"))
}

/// The cgroup v2 mount, from /proc/self/mountinfo (never assumed: it is
/// /sys/fs/cgroup/unified on hybrid systems, /sys/fs/cgroup on unified ones).
pub fn cgroup2_mount() -> Result<PathBuf, SysError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .step(|| "read /proc/self/mountinfo".into())?;
    info.lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount_point = mount.split(' ').nth(4)?;
            (fs.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            SysError::new(
                "find the cgroup v2 mount",
                "no cgroup2 file system is mounted",
            )
        })
}

fn sandbox_cgroup(slot: u32) -> Result<PathBuf, SysError> {
    Ok(cgroup2_mount()?.join("sbx").join(slot.to_string()))
}

/// Whether a bpf file system is mounted at `path` (one statfs, no mount table to read).
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mounts sbx's bpffs and loads and pins the programs and maps, unless that is done already.
fn ensure_loaded() -> Result<(), SysError> {
    let dir = bpf_dir();
    if !is_bpffs(&dir) {
        std::fs::create_dir_all(&dir).step(|| format!("create {}", dir.display()))?;
        nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .step(|| format!("mount a bpf file system on {}", dir.display()))?;
    }
    let pins = pins();
    if pins.join("prog_ingress").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&pins).step(|| format!("create {}", pins.display()))?;
    let mut ebpf = aya::Ebpf::load(OBJECT).step(|| "load sbx's eBPF programs".into())?;
    // Verifies, loads and pins each program of a list, as the aya type its hook takes.
    macro_rules! load_and_pin {
        ($kind:ty, $programs:expr) => {
            for (name, _) in $programs {
                let program: &mut $kind = ebpf
                    .program_mut(name)
                    .ok_or_else(|| {
                        SysError::new(format!("find program {name}"), "missing from the object")
                    })?
                    .try_into()
                    .step(|| format!("program {name}"))?;
                program
                    .load()
                    .step(|| format!("verify and load program {name}"))?;
                program
                    .pin(pins.join(format!("prog_{name}")))
                    .step(|| format!("pin program {name}"))?;
            }
        };
    }
    load_and_pin!(CgroupSockAddr, SOCK_ADDR_PROGRAMS);
    load_and_pin!(CgroupSock, SOCK_PROGRAMS);
    load_and_pin!(CgroupSkb, SKB_PROGRAMS);
    // One list of names (sbx-common) for the programs, the loader and the tests: an object
    // whose maps differ would leave some unpinned or missing.
    let mut found: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    let mut listed = MAPS.to_vec();
    found.sort_unstable();
    listed.sort_unstable();
    if found != listed {
        return Err(SysError::new(
            "load sbx's eBPF programs",
            format!("the object's maps {found:?} are not sbx_common::MAPS {listed:?}"),
        ));
    }
    for name in MAPS {
        ebpf.map(name)
            .ok_or_else(|| SysError::new(format!("find map {name}"), "missing from the object"))?
            .pin(pins.join(format!("map_{name}")))
            .step(|| format!("pin map {name}"))?;
    }
    Ok(())
}

/// Removes the pins of other builds of sbx (an upgrade leaves the old ones, and their maps hold
/// kernel memory). Only when no sandbox is live: one of an older sbx may be using them.
fn remove_other_versions() {
    let ours = pins();
    let Ok(entries) = std::fs::read_dir(bpf_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != ours && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn pinned_map(name: &str) -> Result<Map, SysError> {
    let data = MapData::from_pin(pins().join(format!("map_{name}")))
        .step(|| format!("open pinned map {name}"))?;
    Map::from_map_data(data).step(|| format!("open pinned map {name}"))
}

/// The maps of sbx's programs, opened from their pins.
struct Maps {
    policies: BpfHashMap<MapData, u64, Policy>,
    rule_sets: BpfHashMap<MapData, VerdictKey, RuleSets>,
    allow4: LpmTrie<MapData, Addr4Key, u64>,
    deny4: LpmTrie<MapData, Addr4Key, u64>,
    allow6: LpmTrie<MapData, Addr6Key, u64>,
    deny6: LpmTrie<MapData, Addr6Key, u64>,
    tables: BpfHashMap<MapData, VerdictKey, Table>,
    chunks4: BpfHashMap<MapData, ChunkKey, Chunk4>,
    chunks6: BpfHashMap<MapData, ChunkKey, Chunk6>,
    peers: BpfHashMap<MapData, PeerKey, u64>,
    answered4: BpfHashMap<MapData, Addr4Key, Answered>,
    answered6: BpfHashMap<MapData, Addr6Key, Answered>,
    /// The keys admitted through this handle (a sandbox's own), so that teardown removes them
    /// without scanning the maps' buckets.
    admitted4: std::collections::HashSet<Addr4Key>,
    admitted6: std::collections::HashSet<Addr6Key>,
}

/// A pinned map, opened and typed.
fn typed<T>(name: &str) -> Result<T, SysError>
where
    T: TryFrom<Map>,
    T::Error: std::error::Error,
{
    pinned_map(name)?
        .try_into()
        .step(|| format!("open map {name}"))
}

/// Removes the entries of `map` whose key `doomed` picks.
macro_rules! remove_where {
    ($map:expr, $key:ty, $doomed:expr) => {{
        let keys: Vec<$key> = $map.keys().filter_map(Result::ok).filter($doomed).collect();
        for key in keys {
            let _ = $map.remove(&key);
        }
    }};
}

impl Maps {
    fn open() -> Result<Maps, SysError> {
        Ok(Maps {
            policies: typed("POLICIES")?,
            rule_sets: typed("RULE_SETS")?,
            allow4: typed("ALLOW4")?,
            deny4: typed("DENY4")?,
            allow6: typed("ALLOW6")?,
            deny6: typed("DENY6")?,
            tables: typed("TABLES")?,
            chunks4: typed("CHUNKS4")?,
            chunks6: typed("CHUNKS6")?,
            peers: typed("PEERS")?,
            answered4: typed("ANSWERED4")?,
            answered6: typed("ANSWERED6")?,
            admitted4: Default::default(),
            admitted6: Default::default(),
        })
    }

    /// Removes what `fill` wrote for `cgroup`, and what the programs and the DNS gate added.
    fn remove(&mut self, cgroup: u64, written: &Written) {
        for key in &written.rule_sets {
            let _ = self.rule_sets.remove(key);
        }
        for (trie, keys) in [&self.allow4, &self.deny4].into_iter().zip(&written.v4) {
            let _ = batch::delete(trie.map(), keys);
        }
        for (trie, keys) in [&self.allow6, &self.deny6].into_iter().zip(&written.v6) {
            let _ = batch::delete(trie.map(), keys);
        }
        let _ = batch::delete(self.tables.map(), &written.tables);
        let _ = batch::delete(self.chunks4.map(), &written.chunks4);
        let _ = batch::delete(self.chunks6.map(), &written.chunks6);
        // The peers its UDP sockets sent to: written by the programs, not known in advance.
        remove_where!(self.peers, PeerKey, |k: &PeerKey| k.cgroup == cgroup);
        // What the DNS gate admitted.
        for key in std::mem::take(&mut self.admitted4) {
            let _ = self.answered4.remove(&key);
        }
        for key in std::mem::take(&mut self.admitted6) {
            let _ = self.answered6.remove(&key);
        }
        // Last: its absence tells the next sbx that nothing of this sandbox is left.
        let _ = self.policies.remove(&cgroup);
    }

    /// Removes every entry of the sandboxes whose cgroup id `dead` says is gone.
    fn purge(&mut self, dead: impl Fn(u64) -> bool) -> Result<(), SysError> {
        remove_where!(self.rule_sets, VerdictKey, |k: &VerdictKey| dead(k.cgroup));
        remove_where!(self.allow4, Key<Addr4Key>, |k: &Key<Addr4Key>| dead(
            k.data().cgroup
        ));
        remove_where!(self.deny4, Key<Addr4Key>, |k: &Key<Addr4Key>| dead(
            k.data().cgroup
        ));
        remove_where!(self.allow6, Key<Addr6Key>, |k: &Key<Addr6Key>| dead(
            k.data().cgroup
        ));
        remove_where!(self.deny6, Key<Addr6Key>, |k: &Key<Addr6Key>| dead(
            k.data().cgroup
        ));
        remove_where!(self.tables, VerdictKey, |k: &VerdictKey| dead(k.cgroup));
        remove_where!(self.chunks4, ChunkKey, |k: &ChunkKey| dead(k.cgroup));
        remove_where!(self.chunks6, ChunkKey, |k: &ChunkKey| dead(k.cgroup));
        remove_where!(self.peers, PeerKey, |k: &PeerKey| dead(k.cgroup));
        remove_where!(self.answered4, Addr4Key, |k: &Addr4Key| dead(k.cgroup));
        remove_where!(self.answered6, Addr6Key, |k: &Addr6Key| dead(k.cgroup));
        // Last, as in teardown: a policy entry is what tells that a sandbox left something.
        remove_where!(self.policies, u64, |c: &u64| dead(*c));
        Ok(())
    }
}

/// The rule sets of one verdict as the programs read them: descriptors (protocol, at most
/// [`MAX_PORT_RANGES`] ranges), the bits of the descriptors of each rule set of the Plan, and
/// those of each of `groups` (the allowed name rules' protocol and ports, whose addresses come
/// later, from DNS answers).
struct Descriptors {
    descriptors: Vec<RuleSet>,
    set_bits: Vec<u64>,
    group_bits: Vec<u64>,
}

fn descriptors<'a>(
    sets: impl IntoIterator<Item = (Protocol, &'a Ports)>,
    groups: &[(Protocol, Ports)],
) -> Result<Descriptors, String> {
    let mut descriptors = Vec::new();
    let mut add = |protocol: Protocol, ports: &Ports| -> Result<u64, String> {
        let ranges: Vec<[u16; 2]> = match ports {
            Ports::All => vec![[0, u16::MAX]],
            Ports::Only(ranges) => ranges.iter().map(|r| [r.first, r.last]).collect(),
        };
        let protocol = match protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Any => PROTO_ANY,
        };
        let mut bits = 0u64;
        for chunk in ranges.chunks(MAX_PORT_RANGES) {
            if descriptors.len() == MAX_RULE_SETS {
                return Err(format!(
                    "more than {MAX_RULE_SETS} distinct protocol and port combinations (counting {MAX_PORT_RANGES} port ranges as one)"
                ));
            }
            let mut ports = [[0u16; 2]; MAX_PORT_RANGES];
            ports[..chunk.len()].copy_from_slice(chunk);
            bits |= 1 << descriptors.len();
            descriptors.push(RuleSet {
                protocol,
                ranges: chunk.len() as u8,
                _pad: [0; 2],
                ports,
            });
        }
        Ok(bits)
    };
    let set_bits = sets
        .into_iter()
        .map(|(protocol, ports)| add(protocol, ports))
        .collect::<Result<Vec<u64>, String>>()?;
    let group_bits = groups
        .iter()
        .map(|(protocol, ports)| add(*protocol, ports))
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(Descriptors {
        descriptors,
        set_bits,
        group_bits,
    })
}

/// Per address block, the bits of the descriptors that apply. The trie answers a lookup with
/// the longest matching block only, so a block inside another also carries the outer block's
/// bits.
fn blocks(sets: &[PlanRuleSet], set_bits: &[u64]) -> Vec<(IpNet, u64)> {
    let mut blocks: Vec<(IpNet, u64)> = sets
        .iter()
        .zip(set_bits)
        .flat_map(|(set, bits)| set.addresses.iter().map(|net| (*net, *bits)))
        .collect();
    blocks.sort_unstable_by_key(|(net, _)| *net);
    blocks.dedup_by(|(net, bits), (kept, kept_bits)| {
        let same = net == kept;
        if same {
            *kept_bits |= *bits;
        }
        same
    });
    inherit(&mut blocks);
    blocks
}

/// ORs each block's bits with those of every block containing it. In address order (a block
/// before the blocks inside it: same network, shorter prefix first) the containers of a block are
/// exactly the stack of still-open blocks, so one pass does it.
fn inherit(blocks: &mut [(IpNet, u64)]) {
    let mut open: Vec<(IpNet, u64)> = Vec::new();
    for (net, bits) in blocks {
        while open.last().is_some_and(|(outer, _)| !outer.contains(&*net)) {
            open.pop();
        }
        *bits |= open.last().map_or(0, |(_, b)| *b);
        open.push((*net, *bits));
    }
}

fn trie_key4(cgroup: u64, net: &IpNet) -> Option<Key<Addr4Key>> {
    match net {
        IpNet::V4(n) => Some(Key::new(
            64 + u32::from(n.prefix_len()),
            Addr4Key {
                cgroup,
                addr: n.network().octets(),
                _pad: [0; 4],
            },
        )),
        IpNet::V6(_) => None,
    }
}

fn trie_key6(cgroup: u64, net: &IpNet) -> Option<Key<Addr6Key>> {
    match net {
        IpNet::V6(n) => Some(Key::new(
            64 + u32::from(n.prefix_len()),
            Addr6Key {
                cgroup,
                addr: n.network().octets(),
            },
        )),
        IpNet::V4(_) => None,
    }
}

/// Writes the chunks of one family of a sandbox's table of `singles` (ascending), and records
/// the keys written in `written`: chunk `i` holds the addresses `i * N..`. Returns how many of the
/// singles the table holds, and the first address of each chunk, for the table's directory. A
/// table holds [`MAX_CHUNKS`] chunks, and the chunk maps are shared and bounded (a full one
/// takes no more: E2BIG); the singles beyond are the caller's to put in the tries.
fn write_table<A: Copy + Default, const N: usize>(
    map: &BpfHashMap<MapData, ChunkKey, Chunk<A, N>>,
    singles: &[(A, u64)],
    cgroup: u64,
    verdict: u32,
    written: &mut Vec<ChunkKey>,
) -> std::io::Result<(usize, [A; MAX_CHUNKS])>
where
    Chunk<A, N>: aya::Pod,
{
    let mut keys = Vec::new();
    let mut chunks = Vec::new();
    let mut firsts = [A::default(); MAX_CHUNKS];
    for (index, part) in singles.chunks(N).take(MAX_CHUNKS).enumerate() {
        let mut chunk = Chunk {
            addrs: [A::default(); N],
            bits: [0; N],
        };
        for (i, &(addr, bits)) in part.iter().enumerate() {
            chunk.addrs[i] = addr;
            chunk.bits[i] = bits;
        }
        firsts[index] = chunk.addrs[0];
        chunks.push(chunk);
        keys.push(ChunkKey {
            cgroup,
            verdict,
            index: index as u32,
        });
    }
    let outcome = batch::update_pairs(map.map(), &keys, &chunks);
    written.extend_from_slice(&keys[..outcome.done]);
    match outcome.error {
        Some(e) if e.raw_os_error() != Some(libc::E2BIG) => Err(e),
        _ => Ok((singles.len().min(outcome.done * N), firsts)),
    }
}

pub struct Ebpf;

/// What `fill` wrote, so that teardown removes exactly that: rule set keys, the address keys of
/// each trie (allow then deny), and the tables' keys.
#[derive(Default)]
struct Written {
    rule_sets: Vec<VerdictKey>,
    v4: [Vec<Key<Addr4Key>>; 2],
    v6: [Vec<Key<Addr6Key>>; 2],
    tables: Vec<VerdictKey>,
    chunks4: Vec<ChunkKey>,
    chunks6: Vec<ChunkKey>,
}

struct Live {
    /// The pinned maps, opened once for the sandbox's life (shared with its admitter).
    maps: std::sync::Arc<std::sync::Mutex<Maps>>,
    slot: u32,
    cgroup: PathBuf,
    cgroup_id: u64,
    /// The rule-set bits of each group of allowed name rules (`Plan::name_groups`).
    group_bits: Vec<u64>,
    events: Option<Events>,
    written: Written,
    /// Open for the life of the sandbox: the command is started in it (see `sys::spawn`).
    cgroup_dir: File,
    mode: u8,
    /// The programs' links to the cgroup: closing them detaches the programs.
    links: Vec<OwnedFd>,
}

impl Backend for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn refusals(&self, plan: &Plan) -> Vec<String> {
        // What `fill` writes, without the address blocks: only the descriptors can overflow.
        let literal_allow = plan.allow.iter().filter(|set| set.has_literal_addresses());
        let allow = descriptors(
            literal_allow.map(|set| (set.protocol, &set.ports)),
            &plan.name_groups(),
        );
        let deny = descriptors(plan.deny.iter().map(|set| (set.protocol, &set.ports)), &[]);
        [("allow", allow), ("deny", deny)]
            .into_iter()
            .filter_map(|(verdict, described)| {
                let why = described.err()?;
                Some(format!(
                    "`{verdict}` has {why}, more than the eBPF backend's maps hold"
                ))
            })
            .collect()
    }

    fn describe(&self, plan: &Plan) -> String {
        format!(
            "a cgroup of its own under {}/sbx, with sbx's programs on connect4/6, sendmsg4/6, \
             bind4/6, sock_create and ingress (pinned in {}), and this policy in their maps:\n\
             mode {}, {} allow and {} deny rule sets\n",
            cgroup2_mount()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| e.to_string()),
            bpf_dir().display(),
            plan.mode.as_str(),
            plan.allow.len(),
            plan.deny.len()
        )
    }

    fn setup(
        &self,
        plan: &Plan,
        slot: u32,
        locked: &Locked<'_>,
    ) -> Result<Box<dyn Enforced>, SysError> {
        ensure_loaded()?;
        // The maps outlive runs: with no other sandbox live, anything in them is a leftover of a
        // killed sbx and goes. A sandbox's policy entry is written first and removed last, so
        // an empty POLICIES means there is nothing else either (and saves scanning the others'
        // buckets, 65,536 in some).
        let mut maps = Maps::open()?;
        if locked.live_slots()? <= 1 {
            remove_other_versions();
            if maps.policies.keys().next().is_some() {
                maps.purge(|_| true)?;
            }
        }
        let cgroup = sandbox_cgroup(slot)?;
        std::fs::create_dir_all(&cgroup).step(|| format!("create cgroup {}", cgroup.display()))?;
        let cgroup_id = std::fs::metadata(&cgroup)
            .step(|| format!("stat {}", cgroup.display()))?
            .ino();
        let cgroup_dir = File::open(&cgroup).step(|| format!("open {}", cgroup.display()))?;
        let mode = match plan.mode {
            Mode::None => MODE_NONE,
            Mode::Allowlist => MODE_ALLOWLIST,
            Mode::Open => MODE_OPEN,
        };
        let mut live = Live {
            maps: std::sync::Arc::new(std::sync::Mutex::new(maps)),
            slot,
            cgroup,
            cgroup_id,
            group_bits: Vec::new(),
            events: Some(Events::start(cgroup_id)),
            written: Written::default(),
            cgroup_dir,
            mode,
            links: Vec::new(),
        };
        // Both only write to the kernel, to different objects: one on each core.
        let (filled, attached) = std::thread::scope(|scope| {
            let cgroup = live.cgroup.clone();
            let attaching = scope.spawn(move || attach(&cgroup));
            let filled = live.fill(plan);
            (
                filled,
                attaching.join().expect("attach thread does not panic"),
            )
        });
        let attached = attached.map(|links| live.links = links);
        if let Err(e) = filled.and(attached) {
            let _ = Box::new(live).teardown(locked);
            return Err(e);
        }
        Ok(Box::new(live))
    }

    fn clean_dead_slot(&self, slot: u32) -> Result<(), SysError> {
        let cgroup = sandbox_cgroup(slot)?;
        if cgroup.exists() {
            cgroup::remove_tree(&cgroup)?;
        }
        let live = live_cgroup_ids()?;
        if pins().join("map_POLICIES").exists() {
            Maps::open()?.purge(|id| !live.contains(&id))?;
        }
        // Events spooled for sandboxes that are gone.
        if let Ok(spooled) = std::fs::read_dir(events_dir()) {
            for entry in spooled.flatten() {
                let id = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok());
                if id.is_some_and(|id| !live.contains(&id)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let _ = std::fs::remove_dir(events_dir());
        }
        Ok(())
    }
}

/// Attaches the pinned programs to `cgroup` through bpf links (closing them detaches).
fn attach(cgroup: &Path) -> Result<Vec<OwnedFd>, SysError> {
    let dir = File::open(cgroup).step(|| format!("open {}", cgroup.display()))?;
    SOCK_ADDR_PROGRAMS
        .iter()
        .chain(&SOCK_PROGRAMS)
        .chain(&SKB_PROGRAMS)
        .map(|&(name, hook)| {
            let program = bpf::obj_get(&pins().join(format!("prog_{name}")))
                .step(|| format!("open pinned program {name}"))?;
            bpf::link_create(program.as_fd(), dir.as_fd(), hook)
                .step(|| format!("attach {name} to {}", cgroup.display()))
        })
        .collect()
}

/// The cgroup ids of sandboxes that still have a cgroup.
fn live_cgroup_ids() -> Result<Vec<u64>, SysError> {
    let parent = cgroup2_mount()?.join("sbx");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .filter_map(|e| Some(e.ok()?.metadata().ok()?.ino()))
        .collect())
}

impl Live {
    fn fill(&mut self, plan: &Plan) -> Result<(), SysError> {
        let shared = self.maps.clone();
        let mut guard = shared.lock().expect("not poisoned");
        let maps = &mut *guard;
        let cgroup = self.cgroup_id;
        // First, so that whatever else of this sandbox is in the maps, this is too (see setup).
        let policy = Policy {
            dns_ip4: 0,
            dns_port: 0,
            mode: self.mode,
            _pad: 0,
        };
        maps.policies
            .insert(cgroup, policy, 0)
            .step(|| "write the sandbox's policy".into())?;
        // Names' addresses come through the admitter, with their TTLs.
        let allow = plan.literal_allow();
        for (verdict, sets) in [(VERDICT_ALLOW, &allow), (VERDICT_DENY, &plan.deny)] {
            let groups = match verdict {
                VERDICT_ALLOW => plan.name_groups(),
                _ => Vec::new(),
            };
            let Descriptors {
                descriptors,
                set_bits,
                group_bits,
            } = descriptors(sets.iter().map(|set| (set.protocol, &set.ports)), &groups)
                .map_err(|why| SysError::new("encode the policy", why))?;
            let blocks = blocks(sets, &set_bits);
            if verdict == VERDICT_ALLOW {
                self.group_bits = group_bits;
            }
            if !descriptors.is_empty() {
                let mut sets = RuleSets {
                    sets: [RuleSet {
                        protocol: PROTO_ANY,
                        ranges: 0,
                        _pad: [0; 2],
                        ports: [[0; 2]; MAX_PORT_RANGES],
                    }; MAX_RULE_SETS],
                };
                sets.sets[..descriptors.len()].copy_from_slice(&descriptors);
                let key = VerdictKey::new(cgroup, verdict);
                maps.rule_sets
                    .insert(key, sets, 0)
                    .step(|| "write the rule sets".into())?;
                self.written.rule_sets.push(key);
            }
            let (trie4, trie6) = if verdict == VERDICT_ALLOW {
                (&maps.allow4, &maps.allow6)
            } else {
                (&maps.deny4, &maps.deny6)
            };
            let mut singles4: Vec<(u32, u64)> = Vec::new();
            let mut singles6: Vec<([u64; 2], u64)> = Vec::new();
            let mut in_trie4: Vec<(Key<Addr4Key>, u64)> = Vec::new();
            let mut in_trie6: Vec<(Key<Addr6Key>, u64)> = Vec::new();
            for &(net, bits) in &blocks {
                match net {
                    IpNet::V4(n) if n.prefix_len() == 32 => singles4.push((n.addr().into(), bits)),
                    IpNet::V6(n) if n.prefix_len() == 128 => {
                        let addr = u128::from(n.addr());
                        singles6.push(([(addr >> 64) as u64, addr as u64], bits));
                    }
                    _ => {
                        in_trie4.extend(trie_key4(cgroup, &net).map(|k| (k, bits)));
                        in_trie6.extend(trie_key6(cgroup, &net).map(|k| (k, bits)));
                    }
                }
            }
            // `blocks` is in address order, so the singles are too.
            let (len4, first4) = write_table(
                &maps.chunks4,
                &singles4,
                cgroup,
                verdict,
                &mut self.written.chunks4,
            )
            .step(|| "write the single IPv4 addresses".into())?;
            let (len6, first6) = write_table(
                &maps.chunks6,
                &singles6,
                cgroup,
                verdict,
                &mut self.written.chunks6,
            )
            .step(|| "write the single IPv6 addresses".into())?;
            for &(addr, bits) in &singles4[len4..] {
                let net = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(addr)));
                in_trie4.extend(trie_key4(cgroup, &net).map(|k| (k, bits)));
            }
            for &([high, low], bits) in &singles6[len6..] {
                let addr = std::net::Ipv6Addr::from((u128::from(high) << 64) | u128::from(low));
                in_trie6
                    .extend(trie_key6(cgroup, &IpNet::from(IpAddr::from(addr))).map(|k| (k, bits)));
            }
            if len4 + len6 > 0 {
                let table = Table {
                    len4: len4 as u32,
                    len6: len6 as u32,
                    first4,
                    first6,
                };
                let key = VerdictKey::new(cgroup, verdict);
                maps.tables
                    .insert(key, table, 0)
                    .step(|| "write the single addresses' table".into())?;
                self.written.tables.push(key);
            }
            // Recorded first: a batch that fails half-way has written some of its entries.
            let slot = verdict as usize;
            self.written.v4[slot] = in_trie4.iter().map(|(k, _)| *k).collect();
            self.written.v6[slot] = in_trie6.iter().map(|(k, _)| *k).collect();
            batch::update(trie4.map(), &in_trie4)
                .ok()
                .step(|| "write the IPv4 address entries".into())?;
            batch::update(trie6.map(), &in_trie6)
                .ok()
                .step(|| "write the IPv6 address entries".into())?;
        }
        Ok(())
    }
}

impl Enforced for Live {
    fn placement(&self) -> Placement<'_> {
        Placement {
            netns: None,
            cgroup: Some(self.cgroup_dir.as_fd()),
        }
    }

    /// Port 53 on a loopback address of the sandbox's own (127.83.x.y, from its slot), so that
    /// its resolv.conf can name it and the command never even aims at the host's resolver.
    fn dns_listen_address(&self) -> Option<SocketAddr> {
        let [_, _, hi, lo] = (self.slot + 1).to_be_bytes();
        (self.mode == MODE_ALLOWLIST).then(|| SocketAddr::from(([127, 83, hi, lo], 53)))
    }

    fn denials(&mut self) -> Vec<Denial> {
        let Some(events) = self.events.take() else {
            return Vec::new();
        };
        events
            .finish()
            .into_iter()
            .map(|DenyEventRecord(e)| {
                let v6 = std::net::Ipv6Addr::from(e.addr);
                Denial {
                    pid: Some(e.pid),
                    command: Some(
                        String::from_utf8_lossy(&e.comm)
                            .trim_end_matches('\0')
                            .to_string(),
                    ),
                    destination: Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
                    port: Some(e.port),
                    protocol: Some(e.protocol),
                    name: None,
                    record_type: None,
                    hook: match e.hook {
                        sbx_common::HOOK_CONNECT4 => "connect4",
                        sbx_common::HOOK_CONNECT6 => "connect6",
                        sbx_common::HOOK_SENDMSG4 => "sendmsg4",
                        sbx_common::HOOK_SENDMSG6 => "sendmsg6",
                        sbx_common::HOOK_BIND4 => "bind4",
                        sbx_common::HOOK_BIND6 => "bind6",
                        sbx_common::HOOK_EGRESS => "egress",
                        _ => "sock_create",
                    },
                }
            })
            .collect()
    }

    fn admitter(&self) -> Option<std::sync::Arc<dyn Admit>> {
        if self.mode != MODE_ALLOWLIST {
            return None;
        }
        Some(std::sync::Arc::new(Admitter {
            cgroup: self.cgroup_id,
            group_bits: self.group_bits.clone(),
            maps: self.maps.clone(),
        }))
    }

    fn dns_bound(&mut self, at: SocketAddr) -> Result<(), SysError> {
        let IpAddr::V4(ip) = at.ip() else {
            return Err(SysError::new(
                "configure the DNS redirect",
                "the DNS service is not on IPv4",
            ));
        };
        let mut maps = self.maps.lock().expect("not poisoned");
        let policy = Policy {
            dns_ip4: u32::from(ip),
            dns_port: at.port(),
            mode: self.mode,
            _pad: 0,
        };
        maps.policies
            .insert(self.cgroup_id, policy, 0)
            .step(|| "write the DNS redirect".into())
    }

    fn teardown(self: Box<Self>, _locked: &Locked<'_>) -> Result<(), SysError> {
        let Live {
            maps,
            cgroup,
            cgroup_id,
            written,
            cgroup_dir,
            links,
            ..
        } = *self;
        // The entries first, spread over the cores, then the programs and the cgroup: run side
        // by side, detaching (which patches kernel text on every core) slowed the removals.
        let purged = maps
            .lock()
            .map_err(|_| SysError::new("remove the sandbox's map entries", "poisoned"))
            .map(|mut maps| maps.remove(cgroup_id, &written));
        // Closing the links detaches the programs from the cgroup.
        drop(links);
        drop(cgroup_dir);
        let removed = cgroup::remove_tree(&cgroup);
        // The parent goes with its last sandbox (another live one keeps it: then this fails).
        if let Some(parent) = cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        removed.and(purged)
    }
}

/// For `sbx gc --all`: unpins everything and unmounts sbx's bpffs, when no sandbox is live.
pub fn remove_pinned_state() -> Result<bool, SysError> {
    let dir = bpf_dir();
    if !is_bpffs(&dir) {
        let _ = std::fs::remove_dir(&dir);
        return Ok(false);
    }
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH)
        .step(|| format!("unmount {}", dir.display()))?;
    std::fs::remove_dir(&dir).step(|| format!("remove {}", dir.display()))?;
    if let Ok(parent) = cgroup2_mount().map(|m| m.join("sbx")) {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_inside_blocks_carry_the_outer_bits() {
        let mut blocks: Vec<(IpNet, u64)> = [
            ("10.0.0.0/8", 0b001),
            ("10.1.0.0/16", 0b010),
            ("10.1.2.0/24", 0b100),
            ("10.2.0.0/16", 0b100),
            ("11.0.0.0/8", 0b100),
        ]
        .into_iter()
        .map(|(n, b)| (n.parse().unwrap(), b))
        .collect();
        inherit(&mut blocks);
        let got: Vec<u64> = blocks.into_iter().map(|(_, bits)| bits).collect();
        assert_eq!(got, [0b001, 0b011, 0b111, 0b101, 0b100]);
    }
}

/// Denials reported by the programs, routed to their sandboxes.
///
/// The ring buffer is one map shared by every sandbox, and a ring buffer has one consumer
/// position: two sbx reading it would take each other's events. So whoever drains it does so
/// under a lock, keeps its own sandbox's events and appends the others' to
/// `/run/sbx/events/<cgroup id>`, where their sbx collects them.
pub struct Events {
    cgroup: u64,
    mine: std::sync::Arc<std::sync::Mutex<Vec<DenyEventRecord>>>,
    /// Dropped to stop the drain thread at once (it waits on the other end between drains).
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A `DenyEvent` as read back.
#[derive(Clone, Copy)]
pub struct DenyEventRecord(pub sbx_common::DenyEvent);

fn events_dir() -> PathBuf {
    Path::new(STATE_DIR).join("events")
}

fn events_lock() -> Result<nix::fcntl::Flock<File>, SysError> {
    let path = Path::new(STATE_DIR).join("events.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .step(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .step(|| format!("lock {}", path.display()))
}

const EVENT_SIZE: usize = std::mem::size_of::<sbx_common::DenyEvent>();

/// Drains the ring buffer: `cgroup`'s events into `mine`, the rest into their spool files.
fn drain(cgroup: u64, mine: &mut Vec<DenyEventRecord>) -> Result<(), SysError> {
    let _lock = events_lock()?;
    // Opened anew each time, under the lock: aya keeps the consumer position it read at opening,
    // so a handle kept open would read again what another sbx has drained since.
    let map = pinned_map("EVENTS")?;
    let mut ring: aya::maps::RingBuf<MapData> = map.try_into().step(|| "map EVENTS".into())?;
    let mut others: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    while let Some(item) = ring.next() {
        if item.len() < EVENT_SIZE {
            continue;
        }
        // SAFETY: the programs write whole DenyEvents; read unaligned from the ring's bytes.
        let event =
            unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<sbx_common::DenyEvent>()) };
        if event.cgroup == cgroup {
            mine.push(DenyEventRecord(event));
        } else {
            others
                .entry(event.cgroup)
                .or_default()
                .extend_from_slice(&item[..EVENT_SIZE]);
        }
    }
    // Only for sandboxes still alive: a killed sbx collects nothing, so nothing waits for it.
    if !others.is_empty() {
        let live = live_cgroup_ids()?;
        others.retain(|id, _| live.contains(id));
    }
    if !others.is_empty() {
        let dir = events_dir();
        std::fs::create_dir_all(&dir).step(|| format!("create {}", dir.display()))?;
        for (other, bytes) in others {
            use std::io::Write as _;
            let path = dir.join(other.to_string());
            let mut file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .step(|| format!("open {}", path.display()))?;
            file.write_all(&bytes)
                .step(|| format!("write {}", path.display()))?;
        }
    }
    // What other sbx drained for this sandbox.
    let spool = events_dir().join(cgroup.to_string());
    if let Ok(bytes) = std::fs::read(&spool) {
        for chunk in bytes.chunks_exact(EVENT_SIZE) {
            // SAFETY: the spool holds whole DenyEvents, as written above.
            let event =
                unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<sbx_common::DenyEvent>()) };
            mine.push(DenyEventRecord(event));
        }
        let _ = std::fs::remove_file(&spool);
    }
    // Gone with the last spool file (another sandbox's keeps it: then this fails).
    let _ = std::fs::remove_dir(events_dir());
    Ok(())
}

impl Events {
    /// Drains in the background every 100 ms, so the shared buffer does not fill up.
    pub fn start(cgroup: u64) -> Events {
        let mine = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = {
            let mine = mine.clone();
            std::thread::Builder::new()
                .name("sbx-events".into())
                .spawn(move || {
                    let pause = std::time::Duration::from_millis(100);
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(pause)
                    {
                        let mut batch = Vec::new();
                        let _ = drain(cgroup, &mut batch);
                        mine.lock().expect("not poisoned").extend(batch);
                    }
                })
                .ok()
        };
        Events {
            cgroup,
            mine,
            stop: Some(stop),
            thread,
        }
    }

    /// Every denial of the sandbox, once its command has ended.
    pub fn finish(mut self) -> Vec<DenyEventRecord> {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut all = std::mem::take(&mut *self.mine.lock().expect("not poisoned"));
        let _ = drain(self.cgroup, &mut all);
        all
    }
}

/// Admits answered addresses into `ANSWERED4/6` under the sandbox's cgroup id.
struct Admitter {
    cgroup: u64,
    group_bits: Vec<u64>,
    maps: std::sync::Arc<std::sync::Mutex<Maps>>,
}

fn monotonic_ns() -> u64 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("a monotonic clock");
    (now.tv_sec() as u64) * 1_000_000_000 + now.tv_nsec() as u64
}

impl Admit for Admitter {
    fn admit(
        &self,
        groups: &[usize],
        addrs: &[IpAddr],
        ttl: std::time::Duration,
    ) -> Result<(), SysError> {
        let bits = groups
            .iter()
            .filter_map(|g| self.group_bits.get(*g))
            .fold(0, |acc, b| acc | b);
        let expires =
            monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let mut maps = self.maps.lock().expect("not poisoned");
        for addr in addrs {
            match addr {
                IpAddr::V4(a) => {
                    let key = Addr4Key {
                        cgroup: self.cgroup,
                        addr: a.octets(),
                        _pad: [0; 4],
                    };
                    let bits = bits | maps.answered4.get(&key, 0).map_or(0, |old| old.bits);
                    maps.answered4
                        .insert(key, Answered { bits, expires }, 0)
                        .step(|| format!("admit answered address {a}"))?;
                    maps.admitted4.insert(key);
                }
                IpAddr::V6(a) => {
                    let key = Addr6Key {
                        cgroup: self.cgroup,
                        addr: a.octets(),
                    };
                    let bits = bits | maps.answered6.get(&key, 0).map_or(0, |old| old.bits);
                    maps.answered6
                        .insert(key, Answered { bits, expires }, 0)
                        .step(|| format!("admit answered address {a}"))?;
                    maps.admitted6.insert(key);
                }
            }
        }
        Ok(())
    }
}

/// The kernel memory sbx's pinned maps hold, in bytes (`memlock` of each map's fdinfo), for
/// `sbx doctor`; `None` when nothing is pinned.
pub fn pinned_memory() -> Option<u64> {
    let mut total = None;
    for name in MAPS {
        let Ok(map) = MapData::from_pin(pins().join(format!("map_{name}"))) else {
            continue;
        };
        let fd = map.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let bytes = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *total.get_or_insert(0) += bytes;
    }
    total
}

/// The number of entries in each of sbx's pinned maps (for `sbx doctor`); empty when nothing is
/// pinned. With no sandbox live, every map must be empty.
pub fn pinned_entries() -> Vec<(&'static str, usize)> {
    let Ok(maps) = Maps::open() else {
        return Vec::new();
    };
    vec![
        ("POLICIES", maps.policies.keys().count()),
        ("RULE_SETS", maps.rule_sets.keys().count()),
        ("ALLOW4", maps.allow4.keys().count()),
        ("DENY4", maps.deny4.keys().count()),
        ("ALLOW6", maps.allow6.keys().count()),
        ("DENY6", maps.deny6.keys().count()),
        ("TABLES", maps.tables.keys().count()),
        ("CHUNKS4", maps.chunks4.keys().count()),
        ("CHUNKS6", maps.chunks6.keys().count()),
        ("PEERS", maps.peers.keys().count()),
        ("ANSWERED4", maps.answered4.keys().count()),
        ("ANSWERED6", maps.answered6.keys().count()),
    ]
}

/// Batch writes and removals (`sys::bpf`) on aya's maps: one system call for a whole policy's
/// address entries instead of one per entry.
mod batch {
    use std::os::fd::AsFd as _;

    use aya::maps::MapData;

    pub use crate::sys::bpf::Outcome;
    use crate::sys::bpf::{map_delete_batch, map_update_batch};

    /// Writes `entries` (the map's key and value types), in order.
    pub fn update<K: aya::Pod, V: aya::Pod>(map: &MapData, entries: &[(K, V)]) -> Outcome {
        let (keys, values): (Vec<K>, Vec<V>) = entries.iter().copied().unzip();
        map_update_batch(map.fd().as_fd(), &keys, &values)
    }

    /// Writes `values[i]` under `keys[i]`, in order.
    pub fn update_pairs<K: aya::Pod, V: aya::Pod>(
        map: &MapData,
        keys: &[K],
        values: &[V],
    ) -> Outcome {
        map_update_batch(map.fd().as_fd(), keys, values)
    }

    /// Removes `keys`; stops at the first that is not there.
    pub fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> std::io::Result<()> {
        map_delete_batch(map.fd().as_fd(), keys)
    }
}
