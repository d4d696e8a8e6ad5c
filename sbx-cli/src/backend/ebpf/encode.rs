//! A Plan's rule sets as the programs read them: port descriptors, address blocks in LPM
//! tries, single addresses in sorted tables.

use aya::maps::lpm_trie::Key;
use aya::maps::{HashMap as BpfHashMap, MapData};
use ipnet::IpNet;
use sbx_common::{
    Addr4Key, Addr6Key, Chunk, ChunkKey, MAX_CHUNKS, MAX_PORT_RANGES, MAX_RULE_SETS, PROTO_ANY,
    PROTO_TCP, PROTO_UDP, RuleSet,
};

use crate::plan::RuleSet as PlanRuleSet;
use crate::policy::{Ports, Protocol};
use crate::sys::bpf;

/// The rule sets of one verdict as the programs read them: descriptors (protocol, at most
/// [`MAX_PORT_RANGES`] ranges), the bits of the descriptors of each rule set of the Plan, and
/// those of each of `groups` (the allowed name rules' protocol and ports, whose addresses come
/// later, from DNS answers).
pub(super) struct Descriptors {
    pub(super) descriptors: Vec<RuleSet>,
    pub(super) set_bits: Vec<u64>,
    pub(super) group_bits: Vec<u64>,
}

pub(super) fn descriptors<'a>(
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
pub(super) fn blocks(sets: &[PlanRuleSet], set_bits: &[u64]) -> Vec<(IpNet, u64)> {
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
pub(super) fn inherit(blocks: &mut [(IpNet, u64)]) {
    let mut open: Vec<(IpNet, u64)> = Vec::new();
    for (net, bits) in blocks {
        while open.last().is_some_and(|(outer, _)| !outer.contains(&*net)) {
            open.pop();
        }
        *bits |= open.last().map_or(0, |(_, b)| *b);
        open.push((*net, *bits));
    }
}

pub(super) fn trie_key4(cgroup: u64, net: &IpNet) -> Option<Key<Addr4Key>> {
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

pub(super) fn trie_key6(cgroup: u64, net: &IpNet) -> Option<Key<Addr6Key>> {
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
pub(super) fn write_table<A: Copy + Default, const N: usize>(
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
    let outcome = bpf::update_batch(map, &keys, &chunks);
    written.extend_from_slice(&keys[..outcome.done]);
    match outcome.error {
        Some(e) if e.raw_os_error() != Some(libc::E2BIG) => Err(e),
        _ => Ok((singles.len().min(outcome.done * N), firsts)),
    }
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
