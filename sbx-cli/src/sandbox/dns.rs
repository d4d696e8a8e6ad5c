//! sbx's DNS service for one sandbox: the only DNS server the command can reach. Names the
//! policy allows (in mode open, every name it does not deny) are resolved with sbx's own
//! resolver and answered; every other name gets REFUSED, and no query leaves the host for it. A question is judged by its labels as they came
//! on the wire, by the rule the policy's names follow ([`crate::policy::name`]), and the upstream
//! is asked exactly the name judged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::backend::{Admit, Event, Kept, Verdict as EventVerdict};
use crate::plan::{NameRule, Plan, Verdict};
use crate::policy::name::{HostName, escaped};
use crate::policy::{Ports, Protocol};
use crate::resolve::{Failure, Resolver};
use crate::sys::{Step, SysError};

/// Admissions last at most this long, whatever the TTL says (resolvers cap TTLs at a day too).
const LONGEST_ADMISSION: Duration = Duration::from_secs(24 * 3600);

/// The largest UDP reply the service sends, whatever size the client offers: the size DNS
/// software agreed on (DNS Flag Day 2020) as one that crosses common paths unfragmented. A
/// larger answer is truncated, and the client asks again over TCP.
const UDP_PAYLOAD: u16 = 1232;

/// At most this many addresses per name are admitted while a sandbox runs: a hostile answer
/// stream cannot grow the backend's sets without bound.
pub const ADDRESSES_PER_NAME: usize = 64;

/// Which names the service answers, and how their answers become reachable.
pub struct Names {
    rules: Vec<NameRule>,
    /// Mode open (the service runs there with `Observe::dns`): every name not denied is answered.
    open: bool,
    /// Audit (`Observe::audit`): a name the policy does not allow is answered too, and reported
    /// as a would-be refusal.
    audit: bool,
    groups: Vec<(Protocol, Ports)>,
    /// How long past its TTL an answer stays reachable (`dns.grace`): clients commonly use an
    /// answer a little past its TTL.
    grace: Duration,
    admitter: Option<Arc<dyn Admit>>,
    remembered: Mutex<HashMap<String, HashSet<IpAddr>>>,
    /// Names asked and refused, reported like denied connections.
    refused: Mutex<Kept<Event>>,
    /// What the command asked and was answered, by name, when recording (`sbx learn`).
    asked: Option<Mutex<Asked>>,
}

/// At most this many names are recorded per sandbox: a command asking for endless names (under
/// a wildcard, in open mode) cannot grow sbx's memory without bound. The rest are only counted.
pub const RECORDED_NAMES: usize = 10_000;

/// The questions a command asked sbx's DNS service and their answers, one record per name:
/// what `sbx learn` turns into names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Asked {
    pub names: BTreeMap<HostName, AskedName>,
    /// Names asked past [`RECORDED_NAMES`], not recorded.
    pub dropped: usize,
}

/// One name the command asked (the name as asked, never a CNAME target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskedName {
    /// The record types asked (`A`, `AAAA`, `HTTPS`, …).
    pub types: BTreeSet<String>,
    /// Each address answered, with when it was first answered for this name.
    pub addresses: BTreeMap<IpAddr, SystemTime>,
    /// The CNAME targets of its answers that are host names.
    pub cnames: BTreeSet<HostName>,
}

impl Asked {
    /// Records one answered question: `addresses` as the reply carries them, `cnames` the
    /// targets of its CNAME records.
    pub fn record(
        &mut self,
        name: &HostName,
        record_type: RecordType,
        addresses: &[IpAddr],
        cnames: impl IntoIterator<Item = HostName>,
        now: SystemTime,
    ) {
        if !self.names.contains_key(name) && self.names.len() >= RECORDED_NAMES {
            self.dropped += 1;
            return;
        }
        let entry = self.names.entry(name.clone()).or_insert_with(|| AskedName {
            types: BTreeSet::new(),
            addresses: BTreeMap::new(),
            cnames: BTreeSet::new(),
        });
        entry.types.insert(record_type.to_string());
        for addr in addresses {
            entry.addresses.entry(*addr).or_insert(now);
        }
        entry.cnames.extend(cnames);
    }
}

impl Names {
    pub fn new(plan: &Plan, admitter: Option<Arc<dyn Admit>>) -> Names {
        Names {
            rules: plan.names.clone(),
            open: plan.mode == crate::policy::Mode::Open,
            audit: false,
            groups: plan.name_groups(),
            grace: plan.dns_grace,
            admitter,
            remembered: Mutex::new(HashMap::new()),
            refused: Mutex::new(Kept::default()),
            asked: None,
        }
    }

    /// Records every question answered and its answer, for [`DnsService::finish`] to return.
    pub fn recording(mut self) -> Names {
        self.asked = Some(Mutex::new(Asked::default()));
        self
    }

    fn record(&self, name: &HostName, record_type: RecordType, records: &[Record]) {
        let Some(asked) = &self.asked else {
            return;
        };
        let addrs: Vec<IpAddr> = records.iter().flat_map(addresses).collect();
        // A target that is no host name (a hostile upstream's `_x` or escaped dot) is left out:
        // what is recorded may end up in a policy file.
        let cnames = records.iter().filter_map(|r| match &r.data {
            RData::CNAME(target) => HostName::from_labels(target.0.iter()).ok(),
            _ => None,
        });
        asked.lock().expect("not poisoned").record(
            name,
            record_type,
            &addrs,
            cnames,
            SystemTime::now(),
        );
    }

    /// A name is answered when no deny pattern matches it and an allow pattern does (in mode
    /// open, without one).
    pub fn allows(&self, name: &HostName) -> bool {
        let matching = |verdict: Verdict| {
            self.rules
                .iter()
                .any(|r| r.verdict == verdict && r.matches(name))
        };
        !matching(Verdict::Deny) && (self.open || matching(Verdict::Allow))
    }

    /// Makes `addrs` (answered for `name`) reachable with the ports and protocol of every allow
    /// rule that matches the name, for `ttl`; returns those admitted (all but what exceeds the
    /// per-name cap).
    pub fn admit(
        &self,
        name: &HostName,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> Result<Vec<IpAddr>, SysError> {
        let groups: Vec<usize> = self
            .rules
            .iter()
            .filter(|r| r.verdict == Verdict::Allow && r.matches(name))
            .filter_map(|r| {
                self.groups
                    .iter()
                    .position(|(p, ports)| *p == r.protocol && *ports == r.ports)
            })
            .collect();
        let mut remembered = self.remembered.lock().expect("not poisoned");
        let known = remembered.entry(name.as_str().to_string()).or_default();
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

impl Names {
    /// In audit: names the policy does not allow are answered, and reported as would-be
    /// refusals. What no policy can name (see `judge`) is refused all the same.
    pub fn auditing(self, audit: bool) -> Names {
        Names { audit, ..self }
    }

    /// Records a refused question (`audit`: one answered all the same), reported like a denied
    /// connection.
    fn refuse(&self, name: String, record_type: RecordType, audit: bool) {
        self.refused.lock().expect("not poisoned").push(Event {
            pid: None,
            command: None,
            destination: None,
            port: None,
            protocol: None,
            hook: "dns",
            name: Some(name),
            record_type: Some(record_type.to_string()),
            verdict: EventVerdict::Denied,
            audit,
            time: std::time::SystemTime::now(),
        });
    }
}

pub struct DnsService {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    names: Arc<Names>,
}

impl DnsService {
    /// Binds UDP and TCP on `at` (port 0: one the kernel chooses, the same for both) and serves
    /// on a thread of its own, asking the servers of `resolver` (with none of its connections,
    /// which belong to the runtime that resolved the plan). Returns the service and where it
    /// listens.
    pub fn start(
        at: SocketAddr,
        names: Names,
        resolver: &Resolver,
    ) -> Result<(DnsService, SocketAddr), SysError> {
        let resolver = Arc::new(
            resolver
                .fresh()
                .map_err(|e| SysError::new("set up the DNS service's resolver", e.0))?,
        );
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

    /// Stops the service and returns the names it refused, and what it recorded (see
    /// [`Names::recording`]).
    pub fn finish(mut self) -> (Kept<Event>, Option<Asked>) {
        self.stop();
        let refused = std::mem::take(&mut *self.names.refused.lock().expect("not poisoned"));
        let asked = self
            .names
            .asked
            .as_ref()
            .map(|a| std::mem::take(&mut *a.lock().expect("not poisoned")));
        (refused, asked)
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
            if let Some(reply) = answer(&query, &names, &resolver, Transport::Udp).await {
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
                let Some(reply) = answer(&query, &names, &resolver, Transport::Tcp).await else {
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

/// How the service judges one question, before anything leaves the host for it.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    /// The policy allows the name: ask the upstream exactly this name, of this type.
    Ask(HostName, RecordType),
    /// The policy allows the name, but the record type is not passed on: an empty answer.
    NoData,
    /// Refused, and reported as a refused name (written with [`escaped`]).
    Refused(String, RecordType),
}

/// The one question of a query, judged by its labels as they came on the wire: what the policy
/// matched is what the upstream is asked, never a text form read back. A name that is not a
/// host name (a label holding a `.`, `_`, `*`, a NUL or any other byte that is not a letter, a
/// digit or `-`; the root; more than 253 characters) is refused: no policy can name it. So is
/// any class but IN.
fn judge(question: &Query, names: &Names) -> Judged {
    let labels = || question.name().iter();
    let record_type = question.query_type();
    let refused = || Judged::Refused(escaped(labels()), record_type);
    if question.query_class() != DNSClass::IN {
        return refused();
    }
    let Ok(name) = HostName::from_labels(labels()) else {
        return refused();
    };
    if !names.allows(&name) {
        if !names.audit {
            return refused();
        }
        names.refuse(escaped(labels()), record_type, true);
    }
    match record_type {
        RecordType::A
        | RecordType::AAAA
        | RecordType::CNAME
        | RecordType::HTTPS
        | RecordType::SVCB => Judged::Ask(name, record_type),
        _ => Judged::NoData,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The reply to one message, as a resolver would give it: the question as asked, EDNS when the
/// query had it, and over UDP at most the size the client takes (a reply that does not fit is
/// truncated, and the client asks again over TCP). `None` for a message that gets no reply
/// (unreadable, or not a query).
async fn answer(
    query: &[u8],
    names: &Names,
    resolver: &Resolver,
    transport: Transport,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    // A response sent to the service is not answered: nothing to reflect back and forth.
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    let limit = match transport {
        Transport::Udp => request.max_payload().min(UDP_PAYLOAD),
        Transport::Tcp => u16::MAX,
    };
    // EDNS is answered with EDNS (RFC 6891, 7): clients take its absence for a server that
    // does not speak it, and stay at 512 bytes. Only version 0 exists.
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_PAYLOAD);
        reply.set_edns(ours);
        if edns.version() != 0 {
            reply.metadata.response_code = ResponseCode::BADVERS;
            return finish(reply, limit);
        }
    }
    if request.metadata.op_code != OpCode::Query {
        // NOTIFY, UPDATE, …: nothing of the kind is served, or forwarded.
        reply.metadata.response_code = ResponseCode::NotImp;
        return finish(reply, limit);
    }
    // Exactly one question: a message of several is answered with FORMERR (as common servers
    // do), none of its names asked upstream; each is reported.
    let question = match request.queries.as_slice() {
        [one] => one,
        several => {
            reply.metadata.response_code = ResponseCode::FormErr;
            for q in several {
                names.refuse(escaped(q.name().iter()), q.query_type(), false);
            }
            return finish(reply, limit);
        }
    };
    match judge(question, names) {
        Judged::Refused(name, record_type) => {
            reply.metadata.response_code = ResponseCode::Refused;
            names.refuse(name, record_type, false);
        }
        // Other record types of an allowed name: an empty answer (NODATA).
        Judged::NoData => {
            if let Ok(name) = HostName::from_labels(question.name().iter()) {
                names.record(&name, question.query_type(), &[]);
            }
        }
        Judged::Ask(name, record_type) => match resolver.lookup_records(&name, record_type).await {
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
                        let kept: Vec<Record> = records.into_iter().filter(keep).collect();
                        names.record(&name, record_type, &kept);
                        reply.add_answers(kept.into_iter().map(|r| as_asked(r, question)));
                    }
                    Err(_) => reply.metadata.response_code = ResponseCode::ServFail,
                }
            }
            Err(failure) => {
                names.record(&name, record_type, &[]);
                reply.metadata.response_code = match failure {
                    Failure::NxDomain => ResponseCode::NXDomain,
                    Failure::NoAddresses => ResponseCode::NoError,
                    _ => ResponseCode::ServFail,
                };
            }
        },
    }
    finish(reply, limit)
}

/// `record` with its owner written as the question was, when it is the name asked: the upstream
/// is asked the name in lower case (as judged), and clients that randomise the case of their
/// questions (0x20) check that the answer repeats it.
fn as_asked(mut record: Record, question: &Query) -> Record {
    if record.name == *question.name() {
        record.name = question.name().clone();
    }
    record
}

/// The reply's bytes, truncated (TC) when they exceed `limit`.
fn finish(reply: Message, limit: u16) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= usize::from(limit) {
        return Some(bytes);
    }
    let mut truncated = reply.truncate();
    truncated.metadata.truncation = true;
    truncated.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::Name;

    fn names(patterns: &[(Verdict, &str)]) -> Names {
        Names {
            rules: patterns
                .iter()
                .map(|(verdict, pattern)| NameRule {
                    verdict: *verdict,
                    pattern: pattern.to_string(),
                    protocol: Protocol::Tcp,
                    ports: Ports::All,
                    origin: "test".into(),
                })
                .collect(),
            open: false,
            audit: false,
            groups: Vec::new(),
            grace: Duration::ZERO,
            admitter: None,
            remembered: Mutex::new(HashMap::new()),
            refused: Mutex::new(Kept::default()),
            asked: None,
        }
    }

    fn question(labels: &[&[u8]], class: DNSClass) -> Query {
        let mut q = Query::query(
            Name::from_labels(labels.iter().copied()).unwrap(),
            RecordType::A,
        );
        q.set_query_class(class);
        q
    }

    fn judged(names: &Names, labels: &[&[u8]]) -> Judged {
        judge(&question(labels, DNSClass::IN), names)
    }

    #[test]
    fn questions_are_judged_by_their_wire_labels() {
        let names = names(&[
            (Verdict::Allow, "*.allowed.test"),
            (Verdict::Allow, "exact.test"),
            (Verdict::Deny, "*.no.allowed.test"),
        ]);
        let ask = |text: &str| Judged::Ask(HostName::parse(text).unwrap(), RecordType::A);
        assert_eq!(
            judged(&names, &[b"X", b"Allowed", b"TEST"]),
            ask("x.allowed.test")
        );
        assert_eq!(judged(&names, &[b"EXACT", b"test"]), ask("exact.test"));
        assert_eq!(
            judged(&names, &[b"x", b"evil.allowed", b"test"]),
            Judged::Refused("x.evil\\.allowed.test".into(), RecordType::A)
        );
        for refused in [
            &[&b"a_b"[..], b"allowed", b"test"][..],
            &[b"*", b"allowed", b"test"],
            &[b"a\0", b"allowed", b"test"],
            &[b"allowed", b"test"],
            &[b"a", b"no", b"allowed", b"test"],
            &[b"exact", b"test", b"x"],
            &[],
        ] {
            assert!(
                matches!(judged(&names, refused), Judged::Refused(..)),
                "{refused:?}"
            );
        }
        assert!(matches!(
            judge(
                &question(&[b"a", b"allowed", b"test"], DNSClass::CH),
                &names
            ),
            Judged::Refused(..)
        ));
        let mut txt = question(&[b"a", b"allowed", b"test"], DNSClass::IN);
        txt.set_query_type(RecordType::TXT);
        assert_eq!(judge(&txt, &names), Judged::NoData);
    }

    #[test]
    fn in_audit_a_name_outside_the_policy_is_asked_and_reported() {
        let names = names(&[(Verdict::Allow, "allowed.test")]).auditing(true);
        let ask = |text: &str| Judged::Ask(HostName::parse(text).unwrap(), RecordType::A);
        assert_eq!(judged(&names, &[b"other", b"test"]), ask("other.test"));
        assert_eq!(judged(&names, &[b"allowed", b"test"]), ask("allowed.test"));
        // Not a host name: no policy names it, and it is refused as ever.
        assert!(matches!(
            judged(&names, &[b"a_b", b"test"]),
            Judged::Refused(..)
        ));
        let reported = &names.refused.lock().unwrap().items;
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].name.as_deref(), Some("other.test"));
        assert!(reported[0].audit);
    }

    #[test]
    fn in_mode_open_every_name_but_the_denied_is_answered() {
        let names = Names {
            open: true,
            ..names(&[(Verdict::Deny, "*.no.test")])
        };
        let ask = |text: &str| Judged::Ask(HostName::parse(text).unwrap(), RecordType::A);
        assert_eq!(judged(&names, &[b"any", b"test"]), ask("any.test"));
        assert!(matches!(
            judged(&names, &[b"a", b"no", b"test"]),
            Judged::Refused(..)
        ));
        assert!(matches!(
            judged(&names, &[b"a_b", b"test"]),
            Judged::Refused(..)
        ));
    }
}
