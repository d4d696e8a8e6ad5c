"""A test host's servers: TCP ports answer with a tiny HTTP response naming the port (or N bytes
for `GET /size/N`), UDP ports echo. Prints `ready` once every socket listens. Usage: testsrv.py ADDR,ADDR tcp:PORT,... udp:PORT,..."""
import socket
import sys
import threading

addrs = sys.argv[1].split(",")
specs = [s for arg in sys.argv[2:] for s in arg.split(",") if s]


def tcp(sock, port):
    while True:
        conn, _ = sock.accept()
        try:
            conn.settimeout(2)
            try:
                request = conn.recv(4096)
            except OSError:
                request = b""
            # `GET /size/N`: N bytes (the benchmarks' downloads); anything else: the port's name.
            words = request.split(b" ")
            if len(words) > 1 and words[1].startswith(b"/size/"):
                body = b"x" * int(words[1][len(b"/size/"):])
            else:
                body = f"port {port}\n".encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        finally:
            conn.close()


def udp(sock, port):
    while True:
        data, peer = sock.recvfrom(4096)
        sock.sendto(b"port %d: " % port + data, peer)


for addr in addrs:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for spec in specs:
        proto, port = spec.split(":")
        port = int(port)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr, port))
        if proto == "tcp":
            sock.listen(64)
        target = tcp if proto == "tcp" else udp
        threading.Thread(target=target, args=(sock, port), daemon=True).start()

print("ready", flush=True)
threading.Event().wait()
