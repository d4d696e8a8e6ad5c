//! Batch writes and removals (`sys::bpf`) on aya's maps: one system call for a whole policy's
//! address entries instead of one per entry.

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
pub fn update_pairs<K: aya::Pod, V: aya::Pod>(map: &MapData, keys: &[K], values: &[V]) -> Outcome {
    map_update_batch(map.fd().as_fd(), keys, values)
}

/// Removes `keys`; stops at the first that is not there.
pub fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> std::io::Result<()> {
    map_delete_batch(map.fd().as_fd(), keys)
}
