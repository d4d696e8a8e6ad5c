//! sbx's DNS service for one sandbox: the only DNS server the command can reach. Names the
//! policy allows are resolved with sbx's own resolver and answered; every other name gets
//! REFUSED, and no query leaves the host for it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::backend::{Admit, Denial};
use crate::plan::{NameRule, Plan, Verdict};
use crate::policy::{Ports, Protocol};
use crate::resolve::{Failure, Resolver};
use crate::sys::{Step, SysError};

/// Admissions last at most this long, whatever the TTL says (resolvers cap TTLs at a day too).
const LONGEST_ADMISSION: Duration = Duration::from_secs(24 * 3600);

/// At most this many addresses per name are admitted while a sandbox runs: a hostile answer
/// stream cannot grow the backend's sets without bound.
pub const ADDRESSES_PER_NAME: usize = 64;

/// Which names the service answers, and how their answers become reachable.
pub struct Names {
    rules: Vec<NameRule>,
    groups: Vec<(Protocol, Ports)>,
    /// How long past its TTL an answer stays reachable (`dns.grace`): clients commonly use an
    /// answer a little past its TTL.
    grace: Duration,
    admitter: Option<Arc<dyn Admit>>,
    remembered: Mutex<HashMap<String, HashSet<IpAddr>>>,
    /// Names asked and refused, reported like denied connections.
    refused: Mutex<Vec<Denial>>,
}

impl Names {
    pub fn new(plan: &Plan, admitter: Option<Arc<dyn Admit>>) -> Names {
        Names {
            rules: plan.names.clone(),
            groups: plan.name_groups(),
            grace: plan.dns_grace,
            admitter,
            remembered: Mutex::new(HashMap::new()),
            refused: Mutex::new(Vec::new()),
        }
    }

    /// A name is answered when an allow pattern matches it and no deny pattern does.
    pub fn allows(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let matching = |verdict: Verdict| {
            self.rules
                .iter()
                .any(|r| r.verdict == verdict && r.matches(&name))
        };
        !matching(Verdict::Deny) && matching(Verdict::Allow)
    }

    /// Makes `addrs` (answered for `name`) reachable with the ports and protocol of every allow
    /// rule that matches the name, for `ttl`; returns those admitted (all but what exceeds the
    /// per-name cap).
    pub fn admit(
        &self,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> Result<Vec<IpAddr>, SysError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let groups: Vec<usize> = self
            .rules
            .iter()
            .filter(|r| r.verdict == Verdict::Allow && r.matches(&name))
            .filter_map(|r| {
                self.groups
                    .iter()
                    .position(|(p, ports)| *p == r.protocol && *ports == r.ports)
            })
            .collect();
        let mut remembered = self.remembered.lock().expect("not poisoned");
        let known = remembered.entry(name).or_default();
        let admitted: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| known.contains(a) || (known.len() < ADDRESSES_PER_NAME && known.insert(*a)))
            .collect();
        if let Some(admitter) = &self.admitter
            && !groups.is_empty()
            && !admitted.is_empty()
        {
            admitter.admit(&groups, &admitted, ttl.min(LONGEST_ADMISSION))?;
        }
        Ok(admitted)
    }
}

pub struct DnsService {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    names: Arc<Names>,
}

impl DnsService {
    /// Binds UDP and TCP on `at` (port 0: one the kernel chooses, the same for both) and serves
    /// on a thread of its own. Returns the service and where it listens.
    pub fn start(
        at: SocketAddr,
        names: Names,
        resolver: Arc<Resolver>,
    ) -> Result<(DnsService, SocketAddr), SysError> {
        let (udp, tcp) = bind_pair(at)?;
        let addr = udp
            .local_addr()
            .step(|| "read the DNS service's address".into())?;
        udp.set_nonblocking(true)
            .step(|| "configure the DNS socket".into())?;
        tcp.set_nonblocking(true)
            .step(|| "configure the DNS socket".into())?;
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let names = Arc::new(names);
        let served = names.clone();
        let thread = std::thread::Builder::new()
            .name("sbx-dns".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the DNS service");
                runtime.block_on(async move {
                    let udp = Arc::new(UdpSocket::from_std(udp).expect("tokio UDP socket"));
                    let tcp = TcpListener::from_std(tcp).expect("tokio TCP listener");
                    tokio::select! {
                        _ = serve_udp(udp, served.clone(), resolver.clone()) => {}
                        _ = serve_tcp(tcp, served, resolver) => {}
                        _ = stop => {}
                    }
                });
            })
            .step(|| "start the DNS service".into())?;
        Ok((
            DnsService {
                shutdown: Some(shutdown),
                thread: Some(thread),
                names,
            },
            addr,
        ))
    }

    /// Stops the service and returns the names it refused.
    pub fn finish(mut self) -> Vec<Denial> {
        self.stop();
        std::mem::take(&mut *self.names.refused.lock().expect("not poisoned"))
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same address and port.
fn bind_pair(at: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), SysError> {
    for _ in 0..64 {
        let udp =
            std::net::UdpSocket::bind(at).step(|| format!("bind the DNS service to {at}/udp"))?;
        let bound = udp
            .local_addr()
            .step(|| "read the DNS service's address".into())?;
        match std::net::TcpListener::bind(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            // A kernel-chosen UDP port may be taken for TCP: choose again.
            Err(e) if at.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                return Err(SysError::new(
                    format!("bind the DNS service to {bound}/tcp"),
                    e,
                ));
            }
        }
    }
    Err(SysError::new(
        "bind the DNS service",
        "no port free for both UDP and TCP",
    ))
}

impl Drop for DnsService {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, names: Arc<Names>, resolver: Arc<Resolver>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, names, resolver) = (socket.clone(), names.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&query, &names, &resolver, 512).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, names: Arc<Names>, resolver: Arc<Resolver>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (names, resolver) = (names.clone(), resolver.clone());
        tokio::spawn(async move {
            loop {
                let Ok(len) = stream.read_u16().await else {
                    return;
                };
                let mut query = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(reply) = answer(&query, &names, &resolver, u16::MAX as usize).await else {
                    return;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The addresses a record makes a client connect to: A and AAAA data, and the address hints of
/// HTTPS and SVCB records.
fn addresses(record: &Record) -> Vec<IpAddr> {
    use hickory_resolver::proto::rr::rdata::svcb::{SVCB, SvcParamValue};
    let hints = |svcb: &SVCB| -> Vec<IpAddr> {
        svcb.svc_params
            .iter()
            .flat_map(|(_, value)| match value {
                SvcParamValue::Ipv4Hint(hint) => hint.0.iter().map(|a| IpAddr::V4(a.0)).collect(),
                SvcParamValue::Ipv6Hint(hint) => hint.0.iter().map(|a| IpAddr::V6(a.0)).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    match &record.data {
        RData::A(a) => vec![IpAddr::V4(a.0)],
        RData::AAAA(a) => vec![IpAddr::V6(a.0)],
        RData::HTTPS(https) => hints(&https.0),
        RData::SVCB(svcb) => hints(svcb),
        _ => Vec::new(),
    }
}

/// The reply to one query, at most `limit` bytes (a UDP reply that does not fit is truncated,
/// and the client retries over TCP).
async fn answer(query: &[u8], names: &Names, resolver: &Resolver, limit: usize) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question.clone());
    let name = question.name().to_string();
    let record_type = question.query_type();
    if !names.allows(&name) {
        reply.metadata.response_code = ResponseCode::Refused;
        names.refused.lock().expect("not poisoned").push(Denial {
            pid: None,
            command: None,
            destination: None,
            port: None,
            protocol: None,
            hook: "dns",
            name: Some(name.trim_end_matches('.').to_string()),
            record_type: Some(record_type.to_string()),
        });
    } else if matches!(
        record_type,
        RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::HTTPS | RecordType::SVCB
    ) {
        match resolver.lookup_records(&name, record_type).await {
            Ok(records) => {
                let addrs: Vec<IpAddr> = records.iter().flat_map(addresses).collect();
                let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
                // The answer leaves only once its addresses are reachable: a connect issued
                // the instant it arrives must not race the backend.
                match names.admit(&name, &addrs, Duration::from_secs(ttl.into()) + names.grace) {
                    Ok(admitted) => {
                        let keep = |r: &Record| match &r.data {
                            RData::A(_) | RData::AAAA(_) => {
                                addresses(r).iter().all(|a| admitted.contains(a))
                            }
                            _ => true,
                        };
                        reply.add_answers(records.into_iter().filter(keep));
                    }
                    Err(_) => reply.metadata.response_code = ResponseCode::ServFail,
                }
            }
            Err(Failure::NxDomain) => reply.metadata.response_code = ResponseCode::NXDomain,
            Err(Failure::NoAddresses) => {}
            Err(_) => reply.metadata.response_code = ResponseCode::ServFail,
        }
    }
    // Other record types of an allowed name: an empty answer (NODATA).
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut truncated = reply.truncate();
    truncated.metadata.truncation = true;
    truncated.to_vec().ok()
}
