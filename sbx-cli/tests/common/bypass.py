"""Bypass attempts run inside the sandbox. Usage: bypass.py V4 ALLOWED_TCP DENIED_TCP ALLOWED_UDP
DENIED_UDP CGROUP_PROCS. Prints `ATTEMPT open|denied DETAIL` per attempt; `open` for a denied
destination is a bypass."""
import errno
import os
import socket
import struct
import sys
import time

v4, tcp_ok, tcp_no, udp_ok, udp_no, procs = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]


def attempt(name, action):
    try:
        action()
        print(name, "open -", flush=True)
    except socket.timeout:
        print(name, "denied timeout", flush=True)
    except OSError as e:
        print(name, "denied", errno.errorcode.get(e.errno, str(e.errno)), flush=True)


def tcp(host, port, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if b"port %d" % port not in s.recv(4096):
            raise OSError(errno.EPROTO, "bad reply")
    finally:
        s.close()


def fastopen(port):
    # TCP Fast Open: the connect happens inside sendto, with data in the SYN.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Blocking, so that the kernel completes the connect inside the call (Python's timeouts make
    # the socket non-blocking); the kernel's own send timeout bounds it.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 2, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 0))
    try:
        s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, (v4, port))
        if b"port %d" % port not in s.recv(4096):
            raise OSError(errno.EPROTO, "bad reply")
    finally:
        s.close()


def sendto(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(b"hello", (v4, port))
        data, _ = s.recvfrom(4096)
        if not data.startswith(b"port %d" % port):
            raise OSError(errno.EPROTO, "bad reply")
    finally:
        s.close()


attempt("mapped-allowed", lambda: tcp("::ffff:" + v4, tcp_ok, socket.AF_INET6))
attempt("mapped-denied", lambda: tcp("::ffff:" + v4, tcp_no, socket.AF_INET6))
attempt("fastopen-allowed", lambda: fastopen(tcp_ok))
attempt("fastopen-denied", lambda: fastopen(tcp_no))
attempt("sendto-allowed", lambda: sendto(udp_ok))
attempt("sendto-denied", lambda: sendto(udp_no))
attempt("raw-socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close())
attempt("packet-socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())

# A daemon: fork, setsid, fork again; the grandchild tries the denied destination.
result = f"/tmp/sbx-bypass-{os.getpid()}"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(result, "w") as out:
            try:
                tcp(v4, tcp_no)
                out.write("open -")
            except OSError as e:
                out.write("denied " + errno.errorcode.get(e.errno, "timeout"))
        os._exit(0)
    os._exit(0)
for _ in range(200):
    if os.path.exists(result) and os.path.getsize(result):
        break
    time.sleep(0.02)
print("daemon-denied", open(result).read() if os.path.exists(result) else "denied no-result", flush=True)
os.unlink(result) if os.path.exists(result) else None

# Leave the sandbox's cgroup for the host's root cgroup, then try again.
if procs != "-":
    try:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
        print("cgroup-move open -", flush=True)
    except OSError as e:
        print("cgroup-move denied", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
attempt("after-move-denied", lambda: tcp(v4, tcp_no))
