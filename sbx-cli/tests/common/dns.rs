//! A real DNS server for tests and benchmarks: UDP and TCP on a loopback port, answering from a
//! zone the test writes, logging every query it receives.
//!
//! Plain threads and blocking sockets, so it serves a test whatever runtime (or none) the test
//! uses, and keeps serving while the test waits on a child process.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// What the server does for one name.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// A and AAAA answers from these addresses.
    Addrs {
        addrs: Vec<IpAddr>,
        ttl: u32,
    },
    /// A CNAME to another name of the zone; the answer carries the whole chain, as a recursive
    /// resolver's does.
    Cname {
        target: String,
        ttl: u32,
    },
    ServFail,
    Refused,
    /// Never answers, over UDP or TCP.
    Silent,
    /// Over UDP: an empty answer with the TC (truncated) bit; over TCP: the inner behaviour.
    TcpOnly(Box<Behaviour>),
    /// One address per answer, the next one each time (IPv4: A queries; others get none).
    Rotate {
        addrs: Vec<IpAddr>,
        ttl: u32,
    },
    /// NXDOMAIN for questions of this type, the inner behaviour for the others: what dnsmasq
    /// with `--local` answers for a type it holds nothing of.
    NxDomainFor(RecordType, Box<Behaviour>),
}

/// Names not in the zone get NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    names: HashMap<String, Behaviour>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    pub fn with(mut self, name: &str, behaviour: Behaviour) -> Zone {
        self.names.insert(name.to_ascii_lowercase(), behaviour);
        self
    }

    pub fn addrs(self, name: &str, addrs: &[&str], ttl: u32) -> Zone {
        let addrs = addrs.iter().map(|a| a.parse().expect("address")).collect();
        self.with(name, Behaviour::Addrs { addrs, ttl })
    }

    pub fn cname(self, name: &str, target: &str, ttl: u32) -> Zone {
        self.with(
            name,
            Behaviour::Cname {
                target: target.into(),
                ttl,
            },
        )
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedQuery {
    /// Lower case, without the trailing dot, in zone-file text (`\.` for a dot inside a label).
    pub name: String,
    /// The name's labels exactly as they came on the wire.
    pub labels: Vec<Vec<u8>>,
    pub record_type: RecordType,
    pub tcp: bool,
}

pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<LoggedQuery>>>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    zone: Zone,
    delay: Duration,
    log: Arc<Mutex<Vec<LoggedQuery>>>,
    rotation: Mutex<HashMap<String, usize>>,
}

impl DnsServer {
    pub fn start(zone: Zone) -> DnsServer {
        DnsServer::start_with_delay(zone, Duration::ZERO)
    }

    /// Every answer leaves `delay` after its query arrived; queries are not serialised, so
    /// thousands can wait at once, as with a slow upstream.
    pub fn start_with_delay(zone: Zone, delay: Duration) -> DnsServer {
        DnsServer::serve(zone, delay, bind_pair())
    }

    /// As `start`, on a given address (UDP and TCP), say a host's resolver on 127.0.0.1:53.
    pub fn start_at(zone: Zone, at: SocketAddr) -> DnsServer {
        let udp = UdpSocket::bind(at).unwrap();
        let tcp = TcpListener::bind(at).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        DnsServer::serve(zone, Duration::ZERO, (udp, tcp))
    }

    fn serve(zone: Zone, delay: Duration, (udp, tcp): (UdpSocket, TcpListener)) -> DnsServer {
        let addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            zone,
            delay,
            log: log.clone(),
            rotation: Mutex::new(HashMap::new()),
        });
        let udp = Arc::new(udp);
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>, SocketAddr)>();
        let mut threads = Vec::new();
        {
            let (udp, stop, shared) = (udp.clone(), stop.clone(), shared.clone());
            threads.push(std::thread::spawn(move || {
                udp_receive(&udp, &stop, &shared, &tx)
            }));
        }
        {
            let udp = udp.clone();
            threads.push(std::thread::spawn(move || {
                // FIFO: every reply has the same delay, so deadlines arrive in order.
                for (deadline, reply, peer) in rx {
                    if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = udp.send_to(&reply, peer);
                }
            }));
        }
        {
            let (stop, shared) = (stop.clone(), shared.clone());
            threads.push(std::thread::spawn(move || tcp_accept(&tcp, &stop, &shared)));
        }
        DnsServer {
            addr,
            stop,
            log,
            threads,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn queries(&self) -> Vec<LoggedQuery> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same loopback port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tcp.set_nonblocking(true).unwrap();
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

fn udp_receive(
    udp: &UdpSocket,
    stop: &AtomicBool,
    shared: &Shared,
    replies: &mpsc::Sender<(Instant, Vec<u8>, SocketAddr)>,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = udp.recv_from(&mut buf) else {
            continue;
        };
        let arrived = Instant::now();
        if let Some(reply) = respond(shared, &buf[..len], false) {
            let _ = replies.send((arrived + shared.delay, reply, peer));
        }
    }
}

fn tcp_accept(listener: &TcpListener, stop: &Arc<AtomicBool>, shared: &Arc<Shared>) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (stop, shared) = (stop.clone(), shared.clone());
                connections.push(std::thread::spawn(move || {
                    tcp_serve(stream, &stop, &shared)
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

fn tcp_serve(mut stream: TcpStream, stop: &AtomicBool, shared: &Shared) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let query: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            std::thread::sleep(shared.delay);
            if let Some(reply) = respond(shared, &query, true) {
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend(reply);
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        }
    }
}

/// The wire-format reply to one query, or `None` to stay silent.
fn respond(shared: &Shared, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let qname = question.name().to_ascii();
    let qname = qname.trim_end_matches('.').to_ascii_lowercase();
    let qtype = question.query_type();
    shared.log.lock().unwrap().push(LoggedQuery {
        name: qname.clone(),
        labels: question.name().iter().map(<[u8]>::to_vec).collect(),
        record_type: qtype,
        tcp,
    });
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question);

    let mut current = qname;
    for _ in 0..16 {
        let Some(behaviour) = shared.zone.names.get(&current) else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            break;
        };
        let behaviour = match behaviour {
            Behaviour::TcpOnly(_) if !tcp => {
                reply.metadata.truncation = true;
                break;
            }
            Behaviour::TcpOnly(inner) => inner.as_ref(),
            Behaviour::NxDomainFor(record_type, _) if *record_type == qtype => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                break;
            }
            Behaviour::NxDomainFor(_, inner) => inner.as_ref(),
            other => other,
        };
        match behaviour {
            Behaviour::Addrs { addrs, ttl } => {
                let owner = Name::from_ascii(format!("{current}.")).unwrap();
                for addr in addrs {
                    let data = match (addr, qtype) {
                        (IpAddr::V4(a), RecordType::A) => RData::A(A(*a)),
                        (IpAddr::V6(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(owner.clone(), *ttl, data));
                }
                break;
            }
            Behaviour::Cname { target, ttl } => {
                let owner = Name::from_ascii(format!("{current}.")).unwrap();
                let to = Name::from_ascii(format!("{target}.")).unwrap();
                reply.add_answer(Record::from_rdata(owner, *ttl, RData::CNAME(CNAME(to))));
                current = target.to_ascii_lowercase();
            }
            Behaviour::ServFail => {
                reply.metadata.response_code = ResponseCode::ServFail;
                break;
            }
            Behaviour::Refused => {
                reply.metadata.response_code = ResponseCode::Refused;
                break;
            }
            Behaviour::Silent => return None,
            Behaviour::Rotate { addrs, ttl } => {
                if qtype == RecordType::A {
                    let mut rotation = shared.rotation.lock().unwrap();
                    let turn = rotation.entry(current.clone()).or_default();
                    if let IpAddr::V4(a) = addrs[*turn % addrs.len()] {
                        let owner = Name::from_ascii(format!("{current}.")).unwrap();
                        reply.add_answer(Record::from_rdata(owner, *ttl, RData::A(A(a))));
                    }
                    *turn += 1;
                }
                break;
            }
            Behaviour::TcpOnly(_) | Behaviour::NxDomainFor(..) => unreachable!("unwrapped above"),
        }
    }
    // As real servers do: over UDP, an answer larger than the client takes is truncated (TC),
    // and the client asks again over TCP.
    let bytes = reply.to_vec().ok()?;
    if !tcp && bytes.len() > usize::from(request.max_payload().max(512)) {
        let mut truncated = reply.truncate();
        truncated.metadata.truncation = true;
        return truncated.to_vec().ok();
    }
    Some(bytes)
}
