"""Prints a line for every IPv4 or IPv6 packet addressed to one of this test host's addresses
that is TCP or UDP, as the link sees it (before the host's own stack judges it): what a
capture on a destination would record. Arguments: the interface, then the addresses. Prints
`ready` once it listens."""
import socket, sys

iface, addrs = sys.argv[1], set(socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in sys.argv[2:])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((iface, 0))
print("ready", flush=True)
while True:
    frame = s.recv(65535)
    kind, packet = frame[12:14], frame[14:]
    if kind == b"\x08\x00" and packet[16:20] in addrs and packet[9] in (6, 17):
        print("ipv4", socket.inet_ntop(socket.AF_INET, packet[16:20]), packet[9], flush=True)
    elif kind == b"\x86\xdd" and packet[24:40] in addrs and packet[6] != 58:
        print("ipv6", socket.inet_ntop(socket.AF_INET6, packet[24:40]), packet[6], flush=True)
