//! Events of the nftables backend: the table's `refuse` chain logs each refused packet (and its
//! `allowed` chain each new connection, when asked) to an NFLOG group of the sandbox's own, the
//! log prefix telling which, and sbx reads that group over nfnetlink while the command runs. A
//! packet says where it was going, not which process sent it: these events have no pid or
//! command.
//!
//! The group is bound by sbx's socket and goes with it: closing the socket (or sbx dying)
//! leaves nothing behind in the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::elements::{acknowledgements, attribute, finish_message, start_message};
use super::ruleset::{LOG_ALLOWED, LOG_AUDIT};
use crate::backend::{Event, Kept, Verdict};
use crate::sys::netlink::NetfilterSocket;
use crate::sys::{Step, SysError};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_TIMESTAMP: u16 = 11;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Enough of a packet for its addresses and ports.
const COPY_BYTES: u32 = 128;

/// The NFLOG group of the sandbox in `slot` (0x5b00 + slot: out of the low numbers other
/// loggers on the host pick by default).
pub fn group(slot: u32) -> u16 {
    0x5b00_u16.wrapping_add(slot as u16)
}

/// Reads a sandbox's NFLOG group on a thread of its own until `finish` (so that a long run's
/// events do not overflow the socket's buffer).
pub struct EventLog {
    /// Closed by `finish`: the thread wakes, reads what is queued and ends.
    stop: OwnedFd,
    thread: std::thread::JoinHandle<Kept<Event>>,
}

impl EventLog {
    /// Binds `group` (one message per packet, its first bytes copied) and starts reading.
    pub fn start(group: u16) -> Result<EventLog, SysError> {
        let socket = NetfilterSocket::open()?;
        let mut config = Vec::new();
        let mut seq = 0;
        let mut message = |payload: &dyn Fn(&mut Vec<u8>)| {
            seq += 1;
            let start = start_message(
                &mut config,
                (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                seq,
                libc::AF_UNSPEC as u8,
                group,
            );
            payload(&mut config);
            finish_message(&mut config, start);
        };
        message(&|buf| attribute(buf, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]));
        message(&|buf| {
            let mut mode = COPY_BYTES.to_be_bytes().to_vec();
            mode.extend([NFULNL_COPY_PACKET, 0]);
            attribute(buf, NFULA_CFG_MODE, &mode);
            // Sent at once, not gathered into batches.
            attribute(buf, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
        });
        socket
            .send(&config)
            .and_then(|()| acknowledgements(&socket, 2))
            .step(|| format!("listen to NFLOG group {group} for the sandbox's events"))?;
        let (stopped, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .step(|| "create the event log's pipe".into())?;
        let thread = std::thread::Builder::new()
            .name("sbx-nflog".into())
            .spawn(move || read(&socket, &stopped))
            .step(|| "start the event log thread".into())?;
        Ok(EventLog { stop, thread })
    }

    /// Every event logged, once the command has ended.
    pub fn finish(self) -> Kept<Event> {
        drop(self.stop);
        self.thread.join().unwrap_or_default()
    }
}

/// Reads until `stopped` reports its other end closed, then what is still queued.
fn read(socket: &NetfilterSocket, stopped: &OwnedFd) -> Kept<Event> {
    let mut events = Kept::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            return events;
        }
        let stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
        loop {
            match socket.receive_queued(&mut buf) {
                Ok(n) => events.extend(packets(&buf[..n]).filter_map(event)),
                // Overrun: some were lost (one or more); the rest is still there.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.lost += 1,
                Err(_) => break,
            }
        }
        if stopping {
            return events;
        }
    }
}

/// One NFLOG packet message: the packet's ethertype and bytes (from its IP header on), the log
/// prefix, and the packet's time stamp when the kernel had one.
struct Logged<'a> {
    ethertype: u16,
    packet: &'a [u8],
    prefix: &'a [u8],
    time: Option<std::time::SystemTime>,
}

/// Each NFLOG packet message in `datagram`.
fn packets(datagram: &[u8]) -> impl Iterator<Item = Logged<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at + 20 <= datagram.len() {
            let len = u32::from_ne_bytes(datagram[at..at + 4].try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(datagram[at + 4..at + 6].try_into().ok()?);
            if len < 20 || at + len > datagram.len() {
                return None;
            }
            let message = &datagram[at..at + len];
            at += (len + 3) & !3;
            if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
                continue;
            }
            // After the netlink header (16 bytes) and nfgenmsg (4): attributes.
            let (mut protocol, mut payload, mut prefix, mut time) = (0, None, &[][..], None);
            let mut attr = 20;
            while attr + 4 <= message.len() {
                let alen = u16::from_ne_bytes([message[attr], message[attr + 1]]) as usize;
                let akind = u16::from_ne_bytes([message[attr + 2], message[attr + 3]]) & 0x3fff;
                if alen < 4 || attr + alen > message.len() {
                    break;
                }
                let value = &message[attr + 4..attr + alen];
                match akind {
                    NFULA_PACKET_HDR if value.len() >= 2 => {
                        protocol = u16::from_be_bytes([value[0], value[1]]);
                    }
                    NFULA_PAYLOAD => payload = Some(value),
                    NFULA_PREFIX => prefix = value.split(|&b| b == 0).next().unwrap_or(&[]),
                    // Seconds and microseconds, each big-endian 64 bits.
                    NFULA_TIMESTAMP if value.len() >= 16 => {
                        let sec = u64::from_be_bytes(value[..8].try_into().ok()?);
                        let usec = u64::from_be_bytes(value[8..16].try_into().ok()?);
                        time = std::time::UNIX_EPOCH.checked_add(
                            std::time::Duration::from_secs(sec)
                                + std::time::Duration::from_micros(usec),
                        );
                    }
                    _ => {}
                }
                attr += (alen + 3) & !3;
            }
            if let Some(packet) = payload {
                return Some(Logged {
                    ethertype: protocol,
                    packet,
                    prefix,
                    time,
                });
            }
        }
        None
    })
}

/// Where a logged packet was going (address, and for TCP and UDP the port), and whether it was
/// refused, allowed, or let through by audit (by its log prefix).
fn event(logged: Logged<'_>) -> Option<Event> {
    let Logged {
        ethertype,
        packet,
        prefix,
        time,
    } = logged;
    let version = packet.first()? >> 4;
    let (destination, protocol, transport) = match (ethertype, version) {
        (ETH_P_IP, _) | (_, 4) if packet.len() >= 20 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            let addr: [u8; 4] = packet[16..20].try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(addr)),
                packet[9],
                packet.get(header..),
            )
        }
        (ETH_P_IPV6, _) | (_, 6) if packet.len() >= 40 => {
            let addr: [u8; 16] = packet[24..40].try_into().ok()?;
            let (protocol, transport) = past_extension_headers(packet[6], &packet[40..]);
            (IpAddr::V6(Ipv6Addr::from(addr)), protocol, transport)
        }
        _ => return None,
    };
    let port = match (protocol, transport) {
        (6 | 17, Some(t)) if t.len() >= 4 => Some(u16::from_be_bytes([t[2], t[3]])),
        _ => None,
    };
    let (verdict, audit) = match prefix {
        p if p == LOG_ALLOWED.as_bytes() => (Verdict::Allowed, false),
        p if p == LOG_AUDIT.as_bytes() => (Verdict::Denied, true),
        _ => (Verdict::Denied, false),
    };
    Some(Event {
        pid: None,
        command: None,
        destination: Some(destination),
        port,
        protocol: Some(protocol),
        hook: "nftables",
        name: None,
        record_type: None,
        verdict,
        audit,
        time: time.unwrap_or_else(std::time::SystemTime::now),
    })
}

/// The protocol and header after IPv6 extension headers (a multicast listener report comes
/// after a hop-by-hop header); the transport is `None` when the copied bytes end first.
fn past_extension_headers(mut next: u8, mut rest: &[u8]) -> (u8, Option<&[u8]>) {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTHENTICATION: u8 = 51;
    const DESTINATION: u8 = 60;
    while matches!(
        next,
        HOP_BY_HOP | ROUTING | FRAGMENT | AUTHENTICATION | DESTINATION
    ) {
        let (Some(&following), Some(&units)) = (rest.first(), rest.get(1)) else {
            return (next, None);
        };
        let len = match next {
            FRAGMENT => 8,
            AUTHENTICATION => (usize::from(units) + 2) * 4,
            _ => (usize::from(units) + 1) * 8,
        };
        let Some(after) = rest.get(len..) else {
            return (next, None);
        };
        (next, rest) = (following, after);
    }
    (next, Some(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged<'a>(ethertype: u16, packet: &'a [u8], prefix: &'a [u8]) -> Logged<'a> {
        Logged {
            ethertype,
            packet,
            prefix,
            time: None,
        }
    }

    #[test]
    fn a_logged_tcp_packet_gives_its_destination_and_port() {
        let mut packet = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        packet.extend([10, 207, 0, 2, 198, 51, 100, 7]);
        packet.extend([0xc3, 0x50, 0x01, 0xbb]);
        packet.resize(40, 0);
        let d = event(logged(ETH_P_IP, &packet, b"denied")).unwrap();
        assert_eq!(d.destination, Some("198.51.100.7".parse().unwrap()));
        assert_eq!((d.port, d.protocol), (Some(443), Some(6)));
        assert_eq!((d.verdict, d.audit), (Verdict::Denied, false));
        let d = event(logged(ETH_P_IP, &packet, b"allowed")).unwrap();
        assert_eq!((d.verdict, d.audit), (Verdict::Allowed, false));
        let d = event(logged(ETH_P_IP, &packet, b"audit")).unwrap();
        assert_eq!((d.verdict, d.audit), (Verdict::Denied, true));
    }

    #[test]
    fn the_protocol_of_an_ipv6_packet_is_found_past_its_extension_headers() {
        // A multicast listener report: hop-by-hop (router alert), then ICMPv6 type 143.
        let mut packet = vec![0x60, 0, 0, 0, 0, 36, 0, 1];
        packet.extend([0xfe, 0x80].iter().chain(&[0; 13]).chain(&[1]));
        packet.extend([0xff, 0x02].iter().chain(&[0; 13]).chain(&[0x16]));
        packet.extend([58, 0, 5, 2, 0, 0, 1, 0]);
        packet.extend([143, 0, 0, 0, 0, 0, 0, 1]);
        let d = event(logged(ETH_P_IPV6, &packet, b"")).unwrap();
        assert_eq!(d.destination, Some("ff02::16".parse().unwrap()));
        assert_eq!((d.port, d.protocol), (None, Some(58)));
        // A UDP datagram after a destination options header keeps its port.
        let mut packet = packet[..40].to_vec();
        packet[6] = 60;
        packet.extend([17, 0, 1, 4, 0, 0, 0, 0]);
        packet.extend([0xc3, 0x50, 0x14, 0xe9, 0, 8, 0, 0]);
        let d = event(logged(ETH_P_IPV6, &packet, b"")).unwrap();
        assert_eq!((d.port, d.protocol), (Some(5353), Some(17)));
    }
}
