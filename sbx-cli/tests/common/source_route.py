"""Sends to an allowed destination through a source route whose first hop is another address:
IPv4 loose source routing (IP_OPTIONS) and an IPv6 segment routing header (IPV6_RTHDR), over UDP
and TCP. The kernel then addresses the packets to the first hop, not to the destination the
connect and send hooks are shown. Arguments: allowed-v4 allowed-v6 port hop-v4 hop-v6.
Prints one line per attempt: `KIND sent` or `KIND refused ERRNO`."""
import errno, socket, struct, sys

dst4, dst6, port, hop4, hop6 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]

# Loose source route: type 131, length 7, pointer 4, the first hop; then end of options.
lsrr = bytes([131, 7, 4]) + socket.inet_aton(hop4) + b"\x00"
# Segment routing header, two segments: [0] the destination (the kernel writes it), [1] the hop,
# visited first. Next header and length: (8 + 32) / 8 - 1.
srh = struct.pack("!BBBBBBH", 0, 4, 4, 1, 1, 0, 0) + bytes(16) + socket.inet_pton(socket.AF_INET6, hop6)

def attempt(kind, family, sotype, level, option, value, dst):
    s = socket.socket(family, sotype)
    s.settimeout(1)
    try:
        s.setsockopt(level, option, value)
        if sotype == socket.SOCK_DGRAM:
            s.sendto(b"source-routed", (dst, port))
        else:
            s.connect((dst, port))
        print(kind, "sent", flush=True)
    except OSError as e:
        print(kind, "refused", errno.errorcode.get(e.errno, e.errno), flush=True)
    finally:
        s.close()

attempt("udp4", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr, dst4)
attempt("tcp4", socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr, dst4)
attempt("udp6", socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh, dst6)
attempt("tcp6", socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh, dst6)
