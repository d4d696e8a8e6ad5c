//! Addresses of DNS answers, admitted for their TTL.

use std::net::IpAddr;

use sbx_common::{Addr4Key, Addr6Key, Answered};

use super::Admit;
use super::maps::Maps;
use crate::sys::{Step, SysError};

/// Admits answered addresses into `ANSWERED4/6` under the sandbox's cgroup id.
pub(super) struct Admitter {
    pub(super) cgroup: u64,
    pub(super) group_bits: Vec<u64>,
    pub(super) maps: std::sync::Arc<std::sync::Mutex<Maps>>,
}

pub(super) fn monotonic_ns() -> u64 {
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
