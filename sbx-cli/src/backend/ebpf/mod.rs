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

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use sbx_common::{
    Addr4Key, Addr6Key, ChunkKey, MAX_PORT_RANGES, MAX_RULE_SETS, MODE_ALLOWLIST, MODE_NONE,
    MODE_OPEN, PROTO_ANY, Policy, RuleSet, RuleSets, Table, VERDICT_ALLOW, VERDICT_DENY,
    VerdictKey,
};

use super::{Admit, Backend, Enforced, Event, Kept, Observe, Placement, Verdict};
use crate::plan::Plan;
use crate::policy::Mode;
use crate::state::Locked;
use crate::sys::bpf;
use crate::sys::{Step, SysError, cgroup};

mod admit;
mod encode;
mod events;
mod maps;
mod pins;

use admit::Admitter;
use encode::{Descriptors, blocks, descriptors, trie_key4, trie_key6, write_table};
use events::events_dir;
pub use events::{EventRecord, Events};
use maps::Maps;
pub use pins::{MAPS, PROGRAMS, bpf_dir, cgroup2_mount, is_bpffs, pinned_entries, pinned_memory};
use pins::{
    SKB_PROGRAMS, SOCK_ADDR_PROGRAMS, SOCK_PROGRAMS, ensure_loaded, pins, remove_other_versions,
    sandbox_cgroup,
};

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
    /// `sbx_common::FLAG_*`, from the run's `Observe`.
    flags: u8,
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
        observe: &Observe,
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
        let flags = [
            (observe.audit, sbx_common::FLAG_AUDIT),
            (observe.allowed, sbx_common::FLAG_ALLOWED),
            (observe.dns, sbx_common::FLAG_DNS),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, flag)| flags | flag);
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
            flags,
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
            flags: self.flags,
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
            bpf::update_entries(trie4, &in_trie4)
                .ok()
                .step(|| "write the IPv4 address entries".into())?;
            bpf::update_entries(trie6, &in_trie6)
                .ok()
                .step(|| "write the IPv6 address entries".into())?;
        }
        Ok(())
    }
}

impl Live {
    /// Whether sbx's DNS service serves the sandbox: in allowlist mode, and in open mode when
    /// asked (`Observe::dns`).
    fn serves_dns(&self) -> bool {
        self.mode == MODE_ALLOWLIST
            || (self.mode == MODE_OPEN && self.flags & sbx_common::FLAG_DNS != 0)
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
        self.serves_dns()
            .then(|| SocketAddr::from(([127, 83, hi, lo], 53)))
    }

    fn events(&mut self) -> Kept<Event> {
        let Some(events) = self.events.take() else {
            return Kept::default();
        };
        let records = events.finish();
        let items = records
            .items
            .into_iter()
            .map(|EventRecord(e)| {
                let v6 = std::net::Ipv6Addr::from(e.addr);
                Event {
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
                    verdict: match e.verdict {
                        sbx_common::VERDICT_ALLOWED => Verdict::Allowed,
                        _ => Verdict::Denied,
                    },
                    audit: e.audit != 0,
                    time: super::monotonic_to_system(e.time),
                }
            })
            .collect();
        let lost = self
            .maps
            .lock()
            .ok()
            .and_then(|maps| maps.lost.get(&self.cgroup_id, 0).ok())
            .unwrap_or(0);
        Kept {
            items,
            not_kept: records.not_kept,
            lost,
        }
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
            flags: self.flags,
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
