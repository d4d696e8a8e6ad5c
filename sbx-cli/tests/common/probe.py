"""A client run inside the sandbox. Each argument is PROTO:HOST:PORT (HOST may be a name, or
[v6]); prints one line per probe: `PROTO HOST PORT OUTCOME MILLISECONDS DETAIL`, where OUTCOME is
ok; denied (refused at once, however the backend says it: a TCP reset, EPERM, an ICMP error, no
route); no-name (the name did not resolve); timeout (nothing answered: a denial must never look
like this); or error. DETAIL is the errno's name, or -."""
import errno
import socket
import sys
import time


def probe(proto, host, port):
    start = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    except socket.gaierror:
        return "no-name -", start
    family, kind, _, _, addr = infos[0]
    sock = socket.socket(family, kind)
    sock.settimeout(2)
    try:
        sock.connect(addr)
        if proto == "tcp":
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = sock.recv(4096)
            return ("ok -" if b"port %d" % port in data else "error bad-reply"), start
        sock.send(b"hello")
        data = sock.recv(4096)
        return ("ok -" if data.startswith(b"port %d" % port) else "error bad-reply"), start
    except socket.timeout:
        return "timeout -", start
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        denied = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM)
        return ("denied " if e.errno in denied else "error ") + name, start
    finally:
        sock.close()


for arg in sys.argv[1:]:
    proto, rest = arg.split(":", 1)
    host, port = rest.rsplit(":", 1)
    host = host.strip("[]")
    outcome, start = probe(proto, host, int(port))
    outcome, detail = outcome.split(" ")
    print(f"{proto} {host} {port} {outcome} {int((time.monotonic() - start) * 1000)} {detail}", flush=True)
