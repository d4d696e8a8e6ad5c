//! A netfilter netlink socket (nfnetlink: nftables set elements, NFLOG), on the netlink-sys
//! crate. The messages themselves are built and read by the nftables backend.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::{Step, SysError};

pub struct NetfilterSocket(Socket);

impl AsFd for NetfilterSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl NetfilterSocket {
    pub fn open() -> Result<NetfilterSocket, SysError> {
        Socket::new(NETLINK_NETFILTER)
            .map(NetfilterSocket)
            .step(|| "open a netfilter netlink socket".into())
    }

    /// Sends `batch` (whole netlink messages) to the kernel in one datagram.
    pub fn send(&self, batch: &[u8]) -> io::Result<()> {
        // The kernel takes the whole batch in one message; a large one needs a larger buffer
        // (CAP_NET_ADMIN may exceed the system's maximum). Without it, the default size stays.
        let size = batch.len().saturating_mul(2);
        let _ =
            nix::sys::socket::setsockopt(&self.0, nix::sys::socket::sockopt::SndBufForce, &size);
        let sent = self.0.send_to(batch, &SocketAddr::new(0, 0), 0)?;
        if sent == batch.len() {
            Ok(())
        } else {
            Err(io::Error::other("short write to netlink"))
        }
    }

    /// One datagram (a batch of messages) into `buf`, waiting for it.
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(&mut &mut buf[..], 0)
    }

    /// One datagram if one is queued; `WouldBlock` when none is.
    pub fn receive_queued(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(&mut &mut buf[..], libc::MSG_DONTWAIT)
    }
}
