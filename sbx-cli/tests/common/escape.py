"""Escape attempts run inside the sandbox, in order. Each argument is ACTION:HOST:PORT (HOST may be
[v6]); prints one line per action, `ACTION HOST PORT OUTCOME MILLISECONDS DETAIL`, as probe.py
does, so that `testnet::outcomes` reads it. Sockets bound or served stay open until the end.

  serve-tcp, serve-udp   a server of the command's own there (as testsrv.py: TCP answers with a
                         tiny HTTP response naming the port, UDP echoes it); outcome ok or error
  bind-tcp, bind-udp     bind (and for TCP listen) a socket there and keep it, serving nothing
  bind-tcp6only          the same, IPv6 only (IPV6_V6ONLY)
  bind-udp-reuse         bind a UDP socket there with SO_REUSEADDR, which shares a port with any
                         other socket that set it
  tcp, udp               as probe.py: ok, denied (refused at once), timeout or error
  dns                    an A query for `leak.test` to HOST:PORT over UDP: refused (the answer's
                         code is REFUSED: sbx's DNS service), answered (any other code: whoever
                         else answered), denied or timeout
"""
import errno
import socket
import struct
import sys
import threading
import time

DENIED = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM)
kept = []


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve_tcp(sock, port):
    while True:
        conn, _ = sock.accept()
        try:
            conn.settimeout(2)
            try:
                conn.recv(4096)
            except OSError:
                pass
            body = b"port %d\n" % port
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        finally:
            conn.close()


def serve_udp(sock, port):
    while True:
        data, peer = sock.recvfrom(4096)
        sock.sendto(b"port %d: " % port + data, peer)


def bind(kind, host, port):
    sock = socket.socket(family(host), socket.SOCK_STREAM if "tcp" in kind else socket.SOCK_DGRAM)
    # Its own servers take their port again at once, past the last run's TIME_WAIT.
    if kind in ("bind-udp-reuse", "serve-tcp"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family(host) == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if kind == "bind-tcp6only" else 0)
    sock.bind((host, port))
    if "tcp" in kind:
        sock.listen(16)
    kept.append(sock)
    if kind.startswith("serve-"):
        target = serve_tcp if kind == "serve-tcp" else serve_udp
        threading.Thread(target=target, args=(sock, port), daemon=True).start()
    return "ok -"


def connect(kind, host, port):
    sock = socket.socket(family(host), socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        if kind == "tcp":
            sock.connect((host, port))
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = sock.recv(4096)
            return "ok -" if b"port %d" % port in data else "error bad-reply"
        sock.sendto(b"hello", (host, port))
        data = sock.recv(4096)
        return "ok -" if data.startswith(b"port %d" % port) else "error bad-reply"
    finally:
        sock.close()


def dns(host, port):
    query = struct.pack(">HHHHHH", 0x5b5b, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label for label in [b"leak", b"test"]) + b"\0"
    query += struct.pack(">HH", 1, 1)
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        sock.sendto(query, (host, port))
        reply = sock.recv(4096)
        code = reply[3] & 0x0F
        return ("refused -" if code == 5 else "answered rcode-%d" % code)
    finally:
        sock.close()


for arg in sys.argv[1:]:
    kind, rest = arg.split(":", 1)
    host, port = rest.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    start = time.monotonic()
    try:
        if kind.startswith("serve-") or kind.startswith("bind-"):
            outcome = bind(kind, host, port)
        elif kind == "dns":
            outcome = dns(host, port)
        else:
            outcome = connect(kind, host, port)
    except socket.timeout:
        outcome = "timeout -"
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        outcome = ("denied " if e.errno in DENIED else "error ") + name
    outcome, detail = outcome.split(" ")
    print(f"{kind} {host} {port} {outcome} {int((time.monotonic() - start) * 1000)} {detail}", flush=True)
