//! Set elements written to the kernel directly over nfnetlink.
//!
//! `nft` parses and re-checks every element in userspace: 10,000 addresses cost it about 70 ms,
//! the kernel well under a tenth of that. So the table (small, fixed size) goes through `nft`,
//! and the elements of its address sets through this module, before the command starts.
//!
//! An interval set holds each range [first, last] as two elements: `first`, and `last + 1`
//! flagged as the end of an interval (omitted when `last` is the family's highest address).

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ruleset::SetElements;
use crate::sys::netlink::NetfilterSocket;
use crate::sys::{Step, SysError};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NLA_F_NESTED: u16 = 1 << 15;

/// Elements per message: keeps each message far below the kernel's limit.
const ELEMENTS_PER_MESSAGE: usize = 1024;

fn address(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u32::from(n.network()).into(),
        IpNet::V6(n) => u128::from(n.network()),
    }
}

/// Inclusive ranges of addresses of one family, sorted, with touching ranges merged.
pub fn ranges(nets: &[IpNet]) -> Vec<(u128, u128)> {
    let mut ranges: Vec<(u128, u128)> = nets
        .iter()
        .map(|net| match net {
            IpNet::V4(n) => (
                u32::from(n.network()).into(),
                u32::from(n.broadcast()).into(),
            ),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// Adds the addresses of one set of `table` (all of one family), in one transaction: single
/// addresses to a plain set, blocks as ranges to an interval set.
pub fn add(table: &str, elements: &SetElements) -> Result<(), SysError> {
    let SetElements {
        set,
        nets,
        interval,
    } = elements;
    let Some(first) = nets.first() else {
        return Ok(());
    };
    let width = match first.addr() {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    };
    let max = if width == 4 {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    let key = |value: u128| -> Vec<u8> { value.to_be_bytes()[16 - width..].to_vec() };
    let mut elements: Vec<Element> = Vec::new();
    if *interval {
        for (first, last) in ranges(nets) {
            elements.push(Element::key(key(first)));
            if last < max {
                elements.push(Element {
                    interval_end: true,
                    ..Element::key(key(last + 1))
                });
            }
        }
    } else {
        elements.extend(nets.iter().map(|net| Element::key(key(address(net)))));
    }
    send(table, set, &elements)
        .step(|| format!("add {} addresses to nftables set {table} {set}", nets.len()))
}

/// Adds single addresses to the timeout set `set`, each expiring after `timeout` (an address
/// already there gets the new timeout).
pub fn add_timed(
    table: &str,
    set: &str,
    addrs: &[IpAddr],
    timeout: std::time::Duration,
) -> Result<(), SysError> {
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let elements: Vec<Element> = addrs
        .iter()
        .map(|addr| Element {
            timeout_ms: Some(millis),
            ..Element::key(match addr {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            })
        })
        .collect();
    send(table, set, &elements).step(|| format!("admit answered addresses in set {table} {set}"))
}

const NFTA_SET_ELEM_TIMEOUT: u16 = 4;

struct Element {
    key: Vec<u8>,
    interval_end: bool,
    timeout_ms: Option<u64>,
}

impl Element {
    fn key(key: Vec<u8>) -> Element {
        Element {
            key,
            interval_end: false,
            timeout_ms: None,
        }
    }
}

/// Sends `elements` of `set` in one batch (one transaction) and waits for the kernel's answer.
fn send(table: &str, set: &str, elements: &[Element]) -> io::Result<()> {
    if elements.is_empty() {
        return Ok(());
    }
    let socket = NetfilterSocket::open().map_err(|e| io::Error::other(e.to_string()))?;
    let mut batch = Vec::new();
    let mut seq = 1;
    batch_marker(&mut batch, NFNL_MSG_BATCH_BEGIN, seq);
    for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
        seq += 1;
        new_set_elements(&mut batch, seq, table, set, chunk);
    }
    seq += 1;
    batch_marker(&mut batch, NFNL_MSG_BATCH_END, seq);
    socket.send(&batch)?;
    // One acknowledgement per element message, each carrying its error (0 for none).
    acknowledgements(&socket, elements.len().div_ceil(ELEMENTS_PER_MESSAGE))
}

fn push_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

fn push_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Appends a netlink message header whose length is patched by `finish_message`.
pub(super) fn start_message(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) -> usize {
    let start = buf.len();
    push_u32(buf, 0);
    push_u16(buf, kind);
    push_u16(buf, flags);
    push_u32(buf, seq);
    push_u32(buf, 0);
    // nfgenmsg: family, version, resource id (big-endian).
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

pub(super) fn finish_message(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub(super) fn attribute(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    push_u16(buf, (4 + payload.len()) as u16);
    push_u16(buf, kind);
    buf.extend_from_slice(payload);
    pad(buf);
}

fn start_nested(buf: &mut Vec<u8>, kind: u16) -> usize {
    let start = buf.len();
    push_u16(buf, 0);
    push_u16(buf, kind | NLA_F_NESTED);
    start
}

fn finish_nested(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn c_string(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn batch_marker(buf: &mut Vec<u8>, kind: u16, seq: u32) {
    let start = start_message(
        buf,
        kind,
        libc::NLM_F_REQUEST as u16,
        seq,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
    );
    finish_message(buf, start);
}

fn new_set_elements(buf: &mut Vec<u8>, seq: u32, table: &str, set: &str, elements: &[Element]) {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16;
    let start = start_message(
        buf,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
        flags,
        seq,
        NFPROTO_INET,
        0,
    );
    attribute(buf, NFTA_SET_ELEM_LIST_TABLE, &c_string(table));
    attribute(buf, NFTA_SET_ELEM_LIST_SET, &c_string(set));
    let list = start_nested(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
    for e in elements {
        let element = start_nested(buf, NFTA_LIST_ELEM);
        let key_attr = start_nested(buf, NFTA_SET_ELEM_KEY);
        attribute(buf, NFTA_DATA_VALUE, &e.key);
        finish_nested(buf, key_attr);
        if let Some(ms) = e.timeout_ms {
            attribute(buf, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        if e.interval_end {
            attribute(
                buf,
                NFTA_SET_ELEM_FLAGS,
                &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
            );
        }
        finish_nested(buf, element);
    }
    finish_nested(buf, list);
    finish_message(buf, start);
}

/// Reads `expected` acknowledgements from `socket`; the first error among them is returned.
pub(super) fn acknowledgements(socket: &NetfilterSocket, expected: usize) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0;
    while seen < expected {
        let n = socket.receive(&mut buf)?.min(buf.len());
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            if len < 16 || at + len > n {
                break;
            }
            if kind == libc::NLMSG_ERROR as u16 {
                seen += 1;
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            at += (len + 3) & !3;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn touching_blocks_become_one_range_and_gaps_stay() {
        let nets = ["10.0.1.0/24", "10.0.2.0/24", "10.0.0.5/32", "10.0.4.0/24"]
            .map(|n| n.parse().unwrap());
        let got = ranges(&nets);
        let v4 = |a: &str| u128::from(u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()));
        assert_eq!(
            got,
            [
                (v4("10.0.0.5"), v4("10.0.0.5")),
                (v4("10.0.1.0"), v4("10.0.2.255")),
                (v4("10.0.4.0"), v4("10.0.4.255"))
            ]
        );
    }
}
