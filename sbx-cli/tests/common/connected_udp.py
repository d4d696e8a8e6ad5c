"""Connected UDP sockets, run inside the sandbox. Usage: connected_udp.py HOST ALLOWED DENIED,
HOST an IPv4 or IPv6 address (an IPv4 one is also tried IPv4-mapped on an IPv6 socket), ALLOWED
and DENIED UDP ports of an echo server there. Prints `ATTEMPT OUTCOME DETAIL` per attempt:

  connect-denied     connect() to HOST:DENIED: ok (nothing is sent; a real network says ok)
  send-denied        send() on that socket: denied (refused at once, or its ICMP error), open
                     (an echo came back) or timeout
  reconnect-allowed  connect() the same socket to HOST:ALLOWED and send: ok when echoed
  sendto-allowed     sendto(HOST:ALLOWED) on a socket connected to HOST:DENIED: ok when sent
  sendto-denied      sendto(HOST:DENIED) on a socket connected to HOST:ALLOWED: denied, or ok
                     when sent (its ICMP error finds no socket connected there)
  race               one thread connects a socket to DENIED and ALLOWED in turn while another
                     sends on it: ok when it ends (the server must never hear from it at DENIED)

Every datagram carries the word `leak` when its destination is DENIED."""
import errno
import socket
import sys
import threading
import time

host, allowed, denied = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
DENIED = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM)


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def report(name, action):
    try:
        print(name, action(), "-", flush=True)
    except socket.timeout:
        print(name, "timeout -", flush=True)
    except OSError as e:
        outcome = "denied" if e.errno in DENIED else "error"
        print(name, outcome, errno.errorcode.get(e.errno, str(e.errno)), flush=True)


def udp(addr):
    sock = socket.socket(family(addr), socket.SOCK_DGRAM)
    sock.settimeout(1)
    return sock


def echoed(sock, port):
    return "ok" if sock.recv(4096).startswith(b"port %d" % port) else "error"


def run(prefix, addr):
    sock = udp(addr)
    report(prefix + "connect-denied", lambda: sock.connect((addr, denied)) or "ok")

    def send_denied():
        sock.send(b"leak " + prefix.encode())
        sock.recv(4096)
        return "open"

    report(prefix + "send-denied", send_denied)

    def reconnect():
        sock.connect((addr, allowed))
        sock.send(b"hello")
        return echoed(sock, allowed)

    report(prefix + "reconnect-allowed", reconnect)
    sock.close()

    other = udp(addr)
    other.connect((addr, denied))
    report(prefix + "sendto-allowed", lambda: other.sendto(b"hello", (addr, allowed)) and "ok")
    other.close()

    third = udp(addr)
    third.connect((addr, allowed))

    report(prefix + "sendto-denied", lambda: third.sendto(b"leak sendto", (addr, denied)) and "ok")
    third.close()


def race(addr):
    sock = udp(addr)
    stop = time.monotonic() + 1

    def reconnect():
        while time.monotonic() < stop:
            for port in (denied, allowed):
                try:
                    sock.connect((addr, port))
                except OSError:
                    pass

    thread = threading.Thread(target=reconnect)
    thread.start()
    while time.monotonic() < stop:
        try:
            sock.send(b"leak race")
        except OSError:
            pass
    thread.join()
    return "ok"


run("", host)
if family(host) == socket.AF_INET:
    run("mapped-", "::ffff:" + host)
report("race", lambda: race(host))
