"""A command that listens, run inside the sandbox. Usage: inbound.py DIR TCP_PORT UDP_PORT
[PROBE...]. Listens on 0.0.0.0:TCP_PORT (TCP) and 0.0.0.0:UDP_PORT (UDP), answering `reply` to
whatever arrives; talks to itself over loopback; runs the PROBEs (PROTO:HOST:PORT, as probe.py,
against testsrv.py servers); then writes DIR/ready holding its global IPv4 addresses and waits for
DIR/go. Prints `own-tcp OUTCOME`, `own-udp OUTCOME`, `probe PROBE OUTCOME`, and one
`received PROTO PEER DATA` line per connection or datagram its servers got."""
import os
import socket
import subprocess
import sys
import threading
import time

folder, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
received = []

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", tcp_port))
listener.listen(16)
datagrams = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
datagrams.bind(("0.0.0.0", udp_port))


def accept():
    while True:
        conn, peer = listener.accept()
        conn.settimeout(2)
        try:
            data = conn.recv(100)
            received.append(f"received tcp {peer[0]} {data.decode(errors='replace') or '-'}")
            conn.sendall(b"reply")
        except OSError:
            pass
        finally:
            conn.close()


def serve_udp():
    while True:
        data, peer = datagrams.recvfrom(100)
        received.append(f"received udp {peer[0]} {data.decode(errors='replace') or '-'}")
        datagrams.sendto(b"reply", peer)


threading.Thread(target=accept, daemon=True).start()
threading.Thread(target=serve_udp, daemon=True).start()


def attempt(action):
    try:
        return action()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return f"error-{e.errno}"


def own_tcp():
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=2) as s:
        s.sendall(b"own")
        return "ok" if s.recv(100) == b"reply" else "bad-reply"


def own_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"own", ("127.0.0.1", udp_port))
        return "ok" if s.recv(100) == b"reply" else "bad-reply"


def probe(spec):
    proto, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(2)
        s.connect((host, int(port)))
        s.send(b"GET / HTTP/1.0\r\n\r\n" if proto == "tcp" else b"hello")
        return "ok" if b"port " + port.encode() in s.recv(4096) else "bad-reply"


print("own-tcp", attempt(own_tcp), flush=True)
print("own-udp", attempt(own_udp), flush=True)
for spec in sys.argv[4:]:
    print("probe", spec, attempt(lambda: probe(spec)), flush=True)

shown = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True)
addresses = [line.split()[3].split("/")[0] for line in shown.stdout.splitlines()]
with open(os.path.join(folder, "ready.tmp"), "w") as out:
    out.write(" ".join(addresses) + "\n")
os.rename(os.path.join(folder, "ready.tmp"), os.path.join(folder, "ready"))
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(folder, "go")) and time.monotonic() < deadline:
    time.sleep(0.02)
time.sleep(0.2)
for line in received:
    print(line, flush=True)
