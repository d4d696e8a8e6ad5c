//! What entries admit for one destination, as sets that can be joined and subtracted: TCP ports,
//! UDP ports, and the protocols that have no ports (ICMP, …). Review compares policies with
//! these, so that `example.com:443` plus `example.com:80` is seen to cover
//! `{host: example.com, ports: [80, 443]}`, and a widened range shows exactly the ports it adds.

use std::fmt;

use crate::policy::{Entry, Ports, Protocol};

/// Sorted, disjoint, non-adjacent inclusive ranges of ports 1–65535.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn all() -> PortSet {
        PortSet(vec![(1, 65535)])
    }

    fn of(ports: &Ports) -> PortSet {
        match ports {
            Ports::All => PortSet::all(),
            Ports::Only(ranges) => PortSet(ranges.iter().map(|r| (r.first, r.last)).collect()),
        }
    }

    pub fn single(port: u16) -> PortSet {
        PortSet(vec![(port, port)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn union(&self, other: &PortSet) -> PortSet {
        let mut ranges: Vec<(u16, u16)> = self.0.iter().chain(&other.0).copied().collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => {
                    prev.1 = prev.1.max(last);
                }
                _ => merged.push((first, last)),
            }
        }
        PortSet(merged)
    }

    fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for &(first, last) in &self.0 {
            let mut from = u32::from(first);
            let to = u32::from(last);
            for &(o_first, o_last) in &other.0 {
                let (o_first, o_last) = (u32::from(o_first), u32::from(o_last));
                if o_last < from || o_first > to {
                    continue;
                }
                if o_first > from {
                    out.push((from as u16, (o_first - 1) as u16));
                }
                from = o_last + 1;
                if from > to {
                    break;
                }
            }
            if from <= to {
                out.push((from as u16, to as u16));
            }
        }
        PortSet(out)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortSet::all() {
            return f.write_str("every port");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// What is admitted towards one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub tcp: PortSet,
    pub udp: PortSet,
    /// Protocols without ports, which only an entry without ports and `protocol: any` admits.
    pub other: bool,
}

impl Access {
    pub fn everything() -> Access {
        Access {
            tcp: PortSet::all(),
            udp: PortSet::all(),
            other: true,
        }
    }

    /// What `entry` admits towards its target: `protocol: any` with ports means those ports for
    /// TCP and UDP; without ports, every port of both and every other protocol too.
    pub fn of(entry: &Entry) -> Access {
        Access::of_parts(&entry.ports, entry.protocol)
    }

    pub fn of_parts(ports: &Ports, protocol: Protocol) -> Access {
        let set = PortSet::of(ports);
        match protocol {
            Protocol::Tcp => Access {
                tcp: set,
                ..Access::default()
            },
            Protocol::Udp => Access {
                udp: set,
                ..Access::default()
            },
            Protocol::Any => Access {
                other: *ports == Ports::All,
                tcp: set.clone(),
                udp: set,
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && !self.other
    }

    pub fn union(&self, other: &Access) -> Access {
        Access {
            tcp: self.tcp.union(&other.tcp),
            udp: self.udp.union(&other.udp),
            other: self.other || other.other,
        }
    }

    pub fn minus(&self, other: &Access) -> Access {
        Access {
            tcp: self.tcp.minus(&other.tcp),
            udp: self.udp.minus(&other.udp),
            other: self.other && !other.other,
        }
    }

    pub fn intersect(&self, other: &Access) -> Access {
        self.minus(&self.minus(other))
    }

    pub fn covers(&self, other: &Access) -> bool {
        other.minus(self).is_empty()
    }

    pub fn overlaps(&self, other: &Access) -> bool {
        !self.intersect(other).is_empty()
    }
}

/// `tcp 443,8000-8100; udp 53`, or `every port and protocol`.
impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Access::everything() {
            return f.write_str("every port and protocol");
        }
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let mut parts = Vec::new();
        if !self.tcp.is_empty() {
            parts.push(format!("tcp {}", self.tcp));
        }
        if !self.udp.is_empty() {
            parts.push(format!("udp {}", self.udp));
        }
        if self.other {
            parts.push("protocols without ports (ICMP, …)".to_string());
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::entry::parse_short;

    fn set(ranges: &[(u16, u16)]) -> PortSet {
        PortSet(ranges.to_vec())
    }

    #[test]
    fn subtraction_splits_ranges() {
        let all = PortSet::all();
        assert_eq!(
            all.minus(&set(&[(80, 80), (443, 443)])),
            set(&[(1, 79), (81, 442), (444, 65535)])
        );
        assert_eq!(set(&[(80, 90)]).minus(&set(&[(1, 65535)])), set(&[]));
        assert_eq!(set(&[(80, 90)]).minus(&set(&[(85, 100)])), set(&[(80, 84)]));
        assert_eq!(
            set(&[(65535, 65535)]).minus(&set(&[(1, 10)])),
            set(&[(65535, 65535)])
        );
    }

    #[test]
    fn union_merges_adjacent_ranges() {
        assert_eq!(
            set(&[(80, 80)]).union(&set(&[(81, 90), (443, 443)])),
            set(&[(80, 90), (443, 443)])
        );
    }

    #[test]
    fn entries_as_access() {
        let access = |text: &str| Access::of(&parse_short(text).unwrap());
        assert_eq!(access("example.com"), Access::everything());
        let two = access("example.com:443").union(&access("example.com:80"));
        assert_eq!(two.to_string(), "tcp 80,443");
        assert!(!two.covers(&access("example.com")));
        assert!(access("example.com").covers(&two));
        // `protocol: any` with ports is TCP and UDP on those ports, nothing else.
        let any = Access::of_parts(
            &Ports::normalized(vec![crate::policy::PortRange {
                first: 53,
                last: 53,
            }]),
            Protocol::Any,
        );
        assert_eq!(any.to_string(), "tcp 53; udp 53");
        assert_eq!(
            Access::everything().minus(&any).to_string(),
            "tcp 1-52,54-65535; udp 1-52,54-65535; protocols without ports (ICMP, …)"
        );
    }
}
