//! sbx's own resolver: the policy's host names expanded against the servers the policy names
//! (never the sandboxed command's view of DNS), all names at once, A and AAAA, CNAME chains
//! followed, TTLs kept.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures_util::StreamExt;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::{DnsError, NetError, runtime::TokioRuntimeProvider};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use serde::Serialize;

use crate::policy::name::HostName;
use crate::policy::{Dns, DnsServer};

/// How many names are resolved at once. Each takes two queries (A, AAAA). Enough to keep a
/// slow server busy (at 20 ms a query, 256 names in flight is 25,000 queries a second, more than
/// one core parses), and a bound that keeps sockets and memory flat however many names a
/// policy has.
const NAMES_IN_FLIGHT: usize = 256;

/// One name's addresses, each with the TTL of its answer (the smallest TTL along the CNAME chain
/// that led to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The CNAME chain from the queried name, in order (empty when there is none).
    pub cnames: Vec<String>,
    /// Sorted by address.
    pub addresses: Vec<Address>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Address {
    pub ip: IpAddr,
    pub ttl: u32,
}

/// Why a name has no addresses, in the words a DNS operator uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum Failure {
    /// The name does not exist.
    NxDomain,
    /// The name exists but has neither A nor AAAA records.
    NoAddresses,
    ServFail,
    Refused,
    /// No server answered within `timeout` × `attempts`.
    Timeout,
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NxDomain => f.write_str("NXDOMAIN (the name does not exist)"),
            Failure::NoAddresses => f.write_str("no addresses (the name has no A or AAAA records)"),
            Failure::ServFail => f.write_str("SERVFAIL (the server failed to answer)"),
            Failure::Refused => f.write_str("REFUSED (the server refused to answer)"),
            Failure::Timeout => f.write_str("timeout (no server answered)"),
            Failure::Other(why) => f.write_str(why),
        }
    }
}

/// A problem with the resolver's own configuration, before any name is looked up.
#[derive(Debug)]
pub struct SetupError(pub String);

pub struct Resolver {
    inner: TokioResolver,
    servers: Vec<SocketAddr>,
    /// Kept to build [`Resolver::fresh`].
    config: ResolverConfig,
    options: ResolverOpts,
}

impl Resolver {
    /// A resolver for the policy's `dns` settings. `system` reads the host's /etc/resolv.conf
    /// for its name servers only: its search list and options do not apply, since policy names
    /// are always fully qualified.
    pub fn new(dns: &Dns) -> Result<Resolver, SetupError> {
        let mut servers = Vec::new();
        for server in &dns.servers {
            match server {
                DnsServer::Addr(addr) => servers.push(*addr),
                DnsServer::System => servers.extend(system_servers()?),
            }
        }
        servers.dedup();
        if servers.is_empty() {
            return Err(SetupError(
                "no DNS servers: /etc/resolv.conf names none; set `dns.servers` in the policy"
                    .into(),
            ));
        }
        let configs = servers.iter().map(|addr| {
            let mut config = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut config.connections {
                connection.port = addr.port();
            }
            config
        });
        let config = ResolverConfig::from_name_servers(configs.collect());
        let mut options = ResolverOpts::default();
        options.timeout = dns.timeout;
        // hickory counts retries; the policy counts tries.
        options.attempts = dns.attempts.saturating_sub(1) as usize;
        options.ndots = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.max_active_requests = 2 * NAMES_IN_FLIGHT;
        options.preserve_intermediates = true;
        options.cache_size = 0;
        Resolver::build(servers, config, options)
    }

    fn build(
        servers: Vec<SocketAddr>,
        config: ResolverConfig,
        options: ResolverOpts,
    ) -> Result<Resolver, SetupError> {
        let inner = hickory_resolver::Resolver::builder_with_config(
            config.clone(),
            TokioRuntimeProvider::default(),
        )
        .with_options(options.clone())
        .build()
        .map_err(|e| SetupError(format!("cannot set up the resolver: {e}")))?;
        Ok(Resolver {
            inner,
            servers,
            config,
            options,
        })
    }

    /// The same servers and settings, without this resolver's connections. A connection's task
    /// runs on the runtime that opened it: once that runtime is gone, a query handed to the
    /// connection is refused as "busy", and hickory waits 20 ms before it opens another. A
    /// resolver that moves to another runtime (the plan's to the DNS service's) starts afresh.
    pub fn fresh(&self) -> Result<Resolver, SetupError> {
        Resolver::build(
            self.servers.clone(),
            self.config.clone(),
            self.options.clone(),
        )
    }

    /// The servers queried, in order.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Resolves every name concurrently (at most [`NAMES_IN_FLIGHT`] at a time).
    pub async fn resolve_all(
        self: &Arc<Self>,
        names: impl IntoIterator<Item = String>,
    ) -> BTreeMap<String, Result<Answer, Failure>> {
        futures_util::stream::iter(names)
            .map(|name| {
                let resolver = Arc::clone(self);
                async move {
                    let result = resolver.resolve(&name).await;
                    (name, result)
                }
            })
            .buffer_unordered(NAMES_IN_FLIGHT)
            .collect()
            .await
    }

    /// A and AAAA for one name, queried at the same time. The name has an answer when one of
    /// the two has addresses and the other has addresses or none (NODATA, or NXDOMAIN: with
    /// the other type answered, the name exists, and servers such as dnsmasq with `--local`
    /// answer NXDOMAIN for the type they hold nothing of); any other failure of either query is
    /// the name's failure, since a half-answered name would be enforced with half its
    /// addresses.
    pub async fn resolve(&self, name: &str) -> Result<Answer, Failure> {
        if let Some(answer) = localhost(name) {
            return Ok(answer);
        }
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let (v4, v6) = tokio::join!(
            self.inner.lookup(fqdn.as_str(), RecordType::A),
            self.inner.lookup(fqdn.as_str(), RecordType::AAAA)
        );
        let mut answer = Answer {
            cnames: Vec::new(),
            addresses: Vec::new(),
        };
        let mut failures = Vec::new();
        for result in [v4, v6] {
            match result {
                Ok(lookup) => collect(name, lookup.answers(), &mut answer),
                Err(e) => failures.push(classify(&e)),
            }
        }
        let answered = !answer.addresses.is_empty();
        if let Some(failure) = failures.iter().find(|f| match f {
            Failure::NoAddresses => false,
            Failure::NxDomain => !answered,
            _ => true,
        }) {
            return Err(failure.clone());
        }
        if !answered {
            return Err(failures.first().cloned().unwrap_or(Failure::NoAddresses));
        }
        answer.addresses.sort();
        answer.addresses.dedup_by_key(|a| a.ip);
        Ok(answer)
    }
}

/// Every name with its answer or failure.
pub type Answers = BTreeMap<String, Result<Answer, Failure>>;

/// Resolves `names` once, with a resolver for `dns` on a runtime of its own: for the commands
/// that resolve, print and exit (`sbx export --resolve`, `sbx explain --resolve`,
/// `sbx diff --resolve`). `Err` when no resolver can be set up (no servers, no runtime).
pub fn resolve_once(dns: &Dns, names: impl IntoIterator<Item = String>) -> Result<Answers, String> {
    let resolver = Resolver::new(dns)
        .map(Arc::new)
        .map_err(|SetupError(why)| why)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the resolver: {e}"))?;
    Ok(runtime.block_on(resolver.resolve_all(names)))
}

impl Resolver {
    /// The answer records (CNAMEs included) for one query, as sbx's DNS service passes them on.
    ///
    /// The name asked is made from `name`'s labels as they are (no text parsed again, no IDNA
    /// mapping), so the upstream is asked exactly the name the DNS service judged.
    pub async fn lookup_records(
        &self,
        name: &HostName,
        record_type: RecordType,
    ) -> Result<Vec<hickory_resolver::proto::rr::Record>, Failure> {
        let fqdn = Name::from_labels(name.labels().map(str::as_bytes))
            .map_err(|e| Failure::Other(format!("cannot ask for `{name}`: {e}")))?;
        match self.inner.lookup(fqdn, record_type).await {
            Ok(lookup) => Ok(lookup.answers().to_vec()),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// Follows the CNAME chain from `name` through the answer records and adds the addresses at its
/// end, each with the smallest TTL along the way. Names are compared in their ASCII form
/// (`Name`'s `Display` shows `xn--` labels as Unicode, which would match no policy name).
fn collect(name: &str, records: &[hickory_resolver::proto::rr::Record], into: &mut Answer) {
    let mut current = name.trim_end_matches('.').to_ascii_lowercase();
    let mut ttl = u32::MAX;
    let mut chain = Vec::new();
    // Bounded: a CNAME loop in a hostile answer must not spin.
    for _ in 0..=records.len() {
        let owner = |r: &&hickory_resolver::proto::rr::Record| {
            r.name
                .to_ascii()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(&current)
        };
        let Some(cname) = records.iter().filter(owner).find_map(|r| match &r.data {
            RData::CNAME(target) => Some((target.0.to_ascii(), r.ttl)),
            _ => None,
        }) else {
            break;
        };
        ttl = ttl.min(cname.1);
        current = cname.0.trim_end_matches('.').to_ascii_lowercase();
        chain.push(current.clone());
    }
    for record in records.iter().filter(|r| {
        r.name
            .to_ascii()
            .trim_end_matches('.')
            .eq_ignore_ascii_case(&current)
    }) {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        into.addresses.push(Address {
            ip,
            ttl: ttl.min(record.ttl),
        });
    }
    if into.cnames.len() < chain.len() {
        into.cnames = chain;
    }
}

fn classify(e: &NetError) -> Failure {
    match e {
        NetError::Timeout => Failure::Timeout,
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => Failure::NxDomain,
            ResponseCode::NoError => Failure::NoAddresses,
            ResponseCode::ServFail => Failure::ServFail,
            ResponseCode::Refused => Failure::Refused,
            code => Failure::Other(format!("{code}")),
        },
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Failure::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => Failure::Refused,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Failure::NxDomain,
        other => Failure::Other(other.to_string()),
    }
}

/// `localhost` and names below it are loopback by definition (RFC 6761, 6.3); no server is
/// asked, so `localhost:5432` means the same on every machine.
fn localhost(name: &str) -> Option<Answer> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name != "localhost" && !name.ends_with(".localhost") {
        return None;
    }
    Some(Answer {
        cnames: Vec::new(),
        addresses: vec![
            Address {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                ttl: u32::MAX,
            },
            Address {
                ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
                ttl: u32::MAX,
            },
        ],
    })
}

fn system_servers() -> Result<Vec<SocketAddr>, SetupError> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
        SetupError(format!(
            "cannot read the system resolver configuration (/etc/resolv.conf): {e}; \
             name servers explicitly in `dns.servers` instead of `system`"
        ))
    })?;
    Ok(config
        .name_servers()
        .iter()
        .map(|ns| {
            let port = ns.connections.first().map_or(53, |c| c.port);
            SocketAddr::new(ns.ip, port)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::Record;
    use hickory_resolver::proto::rr::rdata::{A, CNAME};

    #[test]
    fn punycode_names_and_chains_are_followed() {
        let name = |text: &str| Name::from_ascii(text).unwrap();
        let records = [
            Record::from_rdata(
                name("xn--bcher-kva.test."),
                60,
                RData::CNAME(CNAME(name("XN--caf-dma.test."))),
            ),
            Record::from_rdata(
                name("xn--caf-dma.test."),
                30,
                RData::A(A("10.213.0.9".parse().unwrap())),
            ),
        ];
        let mut answer = Answer {
            cnames: Vec::new(),
            addresses: Vec::new(),
        };
        collect("xn--bcher-kva.test", &records, &mut answer);
        assert_eq!(answer.cnames, ["xn--caf-dma.test"]);
        assert_eq!(
            answer.addresses,
            [Address {
                ip: "10.213.0.9".parse().unwrap(),
                ttl: 30
            }]
        );
    }
}
