//! The pinned maps, opened and typed, and removing a sandbox's entries from them.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use sbx_common::{
    Addr4Key, Addr6Key, Answered, Chunk4, Chunk6, ChunkKey, PeerKey, Policy, RuleSets, Table,
    VerdictKey,
};

use super::Written;
use super::pins::pinned_map;
use crate::sys::bpf;
use crate::sys::{Step, SysError};

/// The maps of sbx's programs, opened from their pins.
pub(super) struct Maps {
    pub(super) policies: BpfHashMap<MapData, u64, Policy>,
    pub(super) rule_sets: BpfHashMap<MapData, VerdictKey, RuleSets>,
    pub(super) allow4: LpmTrie<MapData, Addr4Key, u64>,
    pub(super) deny4: LpmTrie<MapData, Addr4Key, u64>,
    pub(super) allow6: LpmTrie<MapData, Addr6Key, u64>,
    pub(super) deny6: LpmTrie<MapData, Addr6Key, u64>,
    pub(super) tables: BpfHashMap<MapData, VerdictKey, Table>,
    pub(super) chunks4: BpfHashMap<MapData, ChunkKey, Chunk4>,
    pub(super) chunks6: BpfHashMap<MapData, ChunkKey, Chunk6>,
    pub(super) peers: BpfHashMap<MapData, PeerKey, u64>,
    pub(super) answered4: BpfHashMap<MapData, Addr4Key, Answered>,
    pub(super) answered6: BpfHashMap<MapData, Addr6Key, Answered>,
    /// Per sandbox, the events the programs' ring had no room for.
    pub(super) lost: BpfHashMap<MapData, u64, u64>,
    /// The keys admitted through this handle (a sandbox's own), so that teardown removes them
    /// without scanning the maps' buckets.
    pub(super) admitted4: std::collections::HashSet<Addr4Key>,
    pub(super) admitted6: std::collections::HashSet<Addr6Key>,
}

/// A pinned map, opened and typed.
pub(super) fn typed<T>(name: &str) -> Result<T, SysError>
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
    pub(super) fn open() -> Result<Maps, SysError> {
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
            lost: typed("LOST")?,
            admitted4: Default::default(),
            admitted6: Default::default(),
        })
    }

    /// Removes what `fill` wrote for `cgroup`, and what the programs and the DNS gate added.
    pub(super) fn remove(&mut self, cgroup: u64, written: &Written) {
        for key in &written.rule_sets {
            let _ = self.rule_sets.remove(key);
        }
        for (trie, keys) in [&self.allow4, &self.deny4].into_iter().zip(&written.v4) {
            let _ = bpf::delete_batch(trie, keys);
        }
        for (trie, keys) in [&self.allow6, &self.deny6].into_iter().zip(&written.v6) {
            let _ = bpf::delete_batch(trie, keys);
        }
        let _ = bpf::delete_batch(&self.tables, &written.tables);
        let _ = bpf::delete_batch(&self.chunks4, &written.chunks4);
        let _ = bpf::delete_batch(&self.chunks6, &written.chunks6);
        // The peers its UDP sockets sent to: written by the programs, not known in advance.
        remove_where!(self.peers, PeerKey, |k: &PeerKey| k.cgroup == cgroup);
        // What the DNS gate admitted.
        for key in std::mem::take(&mut self.admitted4) {
            let _ = self.answered4.remove(&key);
        }
        for key in std::mem::take(&mut self.admitted6) {
            let _ = self.answered6.remove(&key);
        }
        let _ = self.lost.remove(&cgroup);
        // Last: its absence tells the next sbx that nothing of this sandbox is left.
        let _ = self.policies.remove(&cgroup);
    }

    /// Removes every entry of the sandboxes whose cgroup id `dead` says is gone.
    pub(super) fn purge(&mut self, dead: impl Fn(u64) -> bool) -> Result<(), SysError> {
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
        remove_where!(self.lost, u64, |c: &u64| dead(*c));
        // Last, as in teardown: a policy entry is what tells that a sandbox left something.
        remove_where!(self.policies, u64, |c: &u64| dead(*c));
        Ok(())
    }
}
