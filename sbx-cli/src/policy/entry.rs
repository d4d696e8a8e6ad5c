//! One policy entry: a destination (host name, wildcard, address or CIDR block) with ports and a
//! protocol, parsed from the short string form or built from the long form's fields.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;
use smallvec::{SmallVec, smallvec};

use super::name::{HostName, NameError, is_strictly_below};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Target {
    /// A host name, lower-case, without a trailing dot.
    Host(String),
    /// `*.suffix`: every name below `suffix`, at any depth, not `suffix` itself.
    Wildcard(String),
    Addr(IpAddr),
    /// A CIDR block whose host bits are zero.
    Net(IpNet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

/// An inclusive range of ports; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ports {
    All,
    /// Sorted, non-empty, with overlapping and adjacent ranges merged. Inline for the common
    /// one or two ranges: entries are copied through every stage, by the thousand.
    Only(SmallVec<[PortRange; 2]>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Entry {
    pub target: Target,
    pub ports: Ports,
    pub protocol: Protocol,
}

/// Why an entry was rejected; the caller adds the location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

fn reject(code: &'static str, message: impl Into<String>) -> EntryError {
    EntryError {
        code,
        message: message.into(),
        help: None,
    }
}

impl EntryError {
    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl Ports {
    pub fn normalized(mut ranges: Vec<PortRange>) -> Ports {
        ranges.sort();
        let mut merged: SmallVec<[PortRange; 2]> = SmallVec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                    last.last = last.last.max(r.last);
                }
                _ => merged.push(r),
            }
        }
        if merged[..]
            == [PortRange {
                first: 1,
                last: 65535,
            }]
        {
            return Ports::All;
        }
        Ports::Only(merged)
    }

    /// Whether every port in `other` is also in `self`.
    pub fn covers(&self, other: &Ports) -> bool {
        match (self, other) {
            (Ports::All, _) => true,
            (Ports::Only(_), Ports::All) => false,
            (Ports::Only(mine), Ports::Only(theirs)) => theirs
                .iter()
                .all(|t| mine.iter().any(|m| m.first <= t.first && t.last <= m.last)),
        }
    }
}

impl Protocol {
    pub fn covers(self, other: Protocol) -> bool {
        self == Protocol::Any || self == other
    }

    pub fn parse(text: &str) -> Result<Protocol, EntryError> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "any" => Ok(Protocol::Any),
            other => Err(
                reject("invalid-protocol", format!("`{other}` is not a protocol"))
                    .help("use `tcp`, `udp` or `any`"),
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Any => "any",
        }
    }
}

impl Target {
    /// Whether every destination `other` names is also named by `self`. Names and addresses are
    /// never compared: what a name resolves to is only known later.
    pub fn covers(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Net(net), Target::Addr(addr)) => net.contains(addr),
            (Target::Net(net), Target::Net(inner)) => net.contains(inner),
            (Target::Addr(a), Target::Net(inner)) => {
                inner.prefix_len() == inner.max_prefix_len() && inner.addr() == *a
            }
            (Target::Wildcard(suffix), Target::Host(name) | Target::Wildcard(name)) => {
                is_strictly_below(name, suffix)
                    || matches!(other, Target::Wildcard(s) if s == suffix)
            }
            _ => self == other,
        }
    }

    pub fn is_name(&self) -> bool {
        matches!(self, Target::Host(_) | Target::Wildcard(_))
    }
}

/// Parses the short string form: `host`, `host:port`, `*.host[:port]`, `addr`, `addr:port`,
/// `[v6]:port`, `cidr`, `cidr:port`, `[v6cidr]:port`.
pub fn parse_short(text: &str) -> Result<Entry, EntryError> {
    if text.trim().is_empty() {
        return Err(reject("empty-entry", "empty entry")
            .help("name a destination such as `example.com:443`, `192.0.2.10` or `10.0.0.0/8`"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(
            reject("invalid-entry", format!("`{text}` contains white space"))
                .help("write one destination per list item"),
        );
    }
    if let Some((scheme, rest)) = text.split_once("://") {
        return Err(url_scheme_error(scheme, rest));
    }
    if let Some(inner) = text.strip_prefix('[') {
        return parse_bracketed(text, inner);
    }
    if let Some(at) = text.find(['?', '#']) {
        return Err(reject(
            "path-in-entry",
            format!("`{text}` has a query or fragment (`{}`)", &text[at..]),
        )
        .help(format!(
            "an entry names a destination, not a URL: write `{}`",
            &text[..at]
        )));
    }
    if text.contains('/') {
        return parse_short_cidr_or_path(text);
    }
    // An IPv6 address has at least two colons; `host:port` has one.
    if text.bytes().filter(|&b| b == b':').count() > 1 {
        return match text.parse::<IpAddr>() {
            Ok(addr) => Ok(Entry::any_port(Target::Addr(addr))),
            Err(_) => Err(unbracketed_ipv6(text)),
        };
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(parse_single_port(port)?)),
        None => (text, None),
    };
    let target = match host.parse::<Ipv4Addr>() {
        Ok(v4) => Target::Addr(IpAddr::V4(v4)),
        Err(_) => parse_name(host)?,
    };
    Ok(match port {
        Some(port) => Entry::tcp_port(target, port),
        None => Entry::any_port(target),
    })
}

fn url_scheme_error(scheme: &str, rest: &str) -> EntryError {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    };
    let suggestion = match (authority.contains(':'), default_port) {
        (false, Some(port)) if !authority.is_empty() => format!("{authority}:{port}"),
        _ => authority.to_string(),
    };
    let err = reject(
        "url-scheme",
        format!("`{scheme}://{rest}` is a URL; an entry names a host and port"),
    );
    if suggestion.is_empty() {
        err
    } else {
        err.help(format!("write `{suggestion}`"))
    }
}

fn parse_bracketed(text: &str, inner: &str) -> Result<Entry, EntryError> {
    let Some((inside, after)) = inner.split_once(']') else {
        return Err(reject(
            "invalid-entry",
            format!("`{text}` has `[` without a closing `]`"),
        )
        .help("bracket an IPv6 address like this: `[2001:db8::1]:443`"));
    };
    let target = if let Some((addr, prefix)) = inside.split_once('/') {
        let net = parse_cidr(text, addr, prefix)?;
        if matches!(net, IpNet::V4(_)) {
            return Err(reject(
                "invalid-entry",
                format!("`{text}`: only IPv6 addresses are bracketed"),
            )
            .help(format!("write `{inside}{after}`")));
        }
        Target::Net(net)
    } else {
        let addr = inside.parse::<Ipv6Addr>().map_err(|_| {
            let err = reject(
                "invalid-address",
                format!("`{inside}` in `{text}` is not an IPv6 address"),
            );
            if inside.parse::<Ipv4Addr>().is_ok() {
                err.help(format!(
                    "only IPv6 addresses are bracketed: write `{inside}{after}`"
                ))
            } else {
                err
            }
        })?;
        Target::Addr(IpAddr::V6(addr))
    };
    match after {
        "" => Ok(Entry::any_port(target)),
        _ => match after.strip_prefix(':') {
            Some(port) => Ok(Entry::tcp_port(target, parse_single_port(port)?)),
            None => Err(reject(
                "invalid-entry",
                format!("`{text}`: expected `:PORT` or nothing after `]`, found `{after}`"),
            )),
        },
    }
}

fn parse_short_cidr_or_path(text: &str) -> Result<Entry, EntryError> {
    let (addr, rest) = text.split_once('/').expect("caller checked for '/'");
    let looks_like_address = addr.parse::<IpAddr>().is_ok();
    let prefix_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if !looks_like_address || prefix_end == 0 {
        let host = addr;
        return Err(
            reject("path-in-entry", format!("`{text}` has a path (`/{rest}`)")).help(format!(
                "an entry names a destination, not a URL: write `{host}`"
            )),
        );
    }
    let (prefix, after) = rest.split_at(prefix_end);
    let net = parse_cidr(text, addr, prefix)?;
    match (after, net) {
        ("", _) => Ok(Entry::any_port(Target::Net(net))),
        (_, IpNet::V6(_)) => Err(reject(
            "ipv6-port-unbracketed",
            format!("`{text}`: an IPv6 CIDR with a port must be bracketed"),
        )
        .help(format!("write `[{addr}/{prefix}]{after}`"))),
        (_, IpNet::V4(_)) => match after.strip_prefix(':') {
            Some(port) => Ok(Entry::tcp_port(Target::Net(net), parse_single_port(port)?)),
            None => Err(reject(
                "invalid-cidr",
                format!("`{text}`: expected `:PORT` or nothing after the prefix length"),
            )),
        },
    }
}

/// Parses `addr/prefix` as written in the long form's `cidr`.
pub fn parse_net(text: &str) -> Result<IpNet, EntryError> {
    match text.split_once('/') {
        Some((addr, prefix)) => parse_cidr(text, addr, prefix),
        None => Err(
            reject("invalid-cidr", format!("`{text}` has no prefix length")).help(format!(
                "write `{text}/32` (or `/128`), or use `ip: {text}`"
            )),
        ),
    }
}

/// Parses `addr/prefix`, refusing host bits: `10.0.0.1/8` is almost always a typo for
/// `10.0.0.0/8` or `10.0.0.1/32`.
fn parse_cidr(text: &str, addr: &str, prefix: &str) -> Result<IpNet, EntryError> {
    let addr: IpAddr = addr.parse().map_err(|_| {
        reject(
            "invalid-cidr",
            format!("`{addr}` in `{text}` is not an IP address"),
        )
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = prefix
        .parse()
        .ok()
        .filter(|&len| len <= max)
        .ok_or_else(|| {
            reject(
                "invalid-cidr",
                format!("`/{prefix}` in `{text}` is not a prefix length"),
            )
            .help(format!("a prefix length is 0 to {max}"))
        })?;
    let net = IpNet::new(addr, len).expect("prefix length checked above");
    if net.trunc() != net {
        return Err(reject(
            "cidr-host-bits",
            format!("`{addr}/{len}` has host bits set"),
        )
        .help(format!(
            "write `{}` for the whole block, or `{addr}` for the one address",
            net.trunc()
        )));
    }
    Ok(net)
}

fn unbracketed_ipv6(text: &str) -> EntryError {
    if let Some((addr, port)) = text.rsplit_once(':')
        && addr.parse::<Ipv6Addr>().is_ok()
        && port.parse::<u16>().is_ok()
    {
        return reject(
            "ipv6-port-unbracketed",
            format!("`{text}`: an IPv6 address with a port must be bracketed"),
        )
        .help(format!("write `[{addr}]:{port}`"));
    }
    reject(
        "invalid-address",
        format!("`{text}` is not an IPv6 address"),
    )
    .help("an IPv6 address with a port is written `[2001:db8::1]:443`")
}

/// A host name or a `*.` wildcard, as in the short form's host part or the long form's `host`.
pub fn parse_name(text: &str) -> Result<Target, EntryError> {
    if let Some(suffix) = text.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(reject(
                "invalid-wildcard",
                format!("`{text}`: `*` may only be the whole first label, once"),
            )
            .help(format!(
                "`*.{}` already matches names at any depth",
                suffix.rsplit("*.").next().unwrap_or(suffix)
            )));
        }
        let suffix = parse_host(suffix)?;
        if !suffix.contains('.') {
            return Err(reject(
                "invalid-wildcard",
                format!("`{text}` would match every name under the top-level domain `{suffix}`"),
            )
            .help("a wildcard needs at least two labels after `*.`, as in `*.example.com`"));
        }
        return Ok(Target::Wildcard(suffix));
    }
    if text.contains('*') {
        let fix = text.split_once('.').map_or_else(
            || "*.example.com".to_string(),
            |(_, rest)| format!("*.{rest}"),
        );
        return Err(reject(
            "invalid-wildcard",
            format!("`{text}`: `*` may only be the whole first label"),
        )
        .help(format!("did you mean `{fix}`?")));
    }
    parse_host(text).map(Target::Host)
}

/// Validates an RFC 1123 host name and returns it in canonical form (lower-case, no trailing
/// dot). The rule is [`HostName`]'s, the one sbx's DNS service judges questions by.
fn parse_host(text: &str) -> Result<String, EntryError> {
    HostName::parse(text)
        .map(HostName::into_string)
        .map_err(|why| match why {
            NameError::NumericLast => reject(
                "invalid-address",
                format!("`{text}` is neither an IP address nor a host name"),
            ),
            NameError::Character { .. } => reject(
                "invalid-host",
                format!("`{text}` is not a valid host name: {why}"),
            )
            .help(
                "host names use letters, digits and `-`; write internationalised names in \
                 their `xn--` form",
            ),
            _ => reject(
                "invalid-host",
                format!("`{text}` is not a valid host name: {why}"),
            ),
        })
}

/// A port as written after `:` in the short form, or as a number in `ports`.
pub fn parse_port(text: &str) -> Result<u16, EntryError> {
    match text.parse::<u64>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        Ok(n) => Err(reject(
            "invalid-port",
            format!("port {n} is outside 1-65535"),
        )),
        Err(_) if text.is_empty() => Err(reject("invalid-port", "missing port number after `:`")),
        Err(_) => Err(
            reject("invalid-port", format!("`{text}` is not a port number"))
                .help("a port is a number from 1 to 65535"),
        ),
    }
}

fn parse_single_port(text: &str) -> Result<u16, EntryError> {
    if text.contains('-') {
        return Err(reject(
            "invalid-port",
            format!("`{text}`: the short form takes one port"),
        )
        .help(format!(
            "use the long form for a range: `{{host: …, ports: [\"{text}\"]}}`"
        )));
    }
    parse_port(text)
}

/// `"80"` or `"8000-8100"`, as in the long form's `ports`.
pub fn parse_port_range(text: &str) -> Result<PortRange, EntryError> {
    let Some((first, last)) = text.split_once('-') else {
        let port = parse_port(text)?;
        return Ok(PortRange {
            first: port,
            last: port,
        });
    };
    let (first, last) = (parse_port(first.trim())?, parse_port(last.trim())?);
    if first > last {
        return Err(reject(
            "reversed-port-range",
            format!("port range `{text}` is reversed"),
        )
        .help(format!("write `{last}-{first}`")));
    }
    Ok(PortRange { first, last })
}

impl Entry {
    pub fn any_port(target: Target) -> Entry {
        Entry {
            target,
            ports: Ports::All,
            protocol: Protocol::Any,
        }
    }

    pub fn tcp_port(target: Target, port: u16) -> Entry {
        Entry {
            target,
            ports: Ports::Only(smallvec![PortRange {
                first: port,
                last: port,
            }]),
            protocol: Protocol::Tcp,
        }
    }

    /// Whether every connection `other` admits is also matched by `self`.
    pub fn covers(&self, other: &Entry) -> bool {
        self.target.covers(&other.target)
            && self.ports.covers(&other.ports)
            && self.protocol.covers(other.protocol)
    }

    /// The entry as YAML: a quoted short form where one exists, else a flow mapping.
    pub fn to_yaml(&self) -> String {
        match self.short_form() {
            Some(short) => format!("\"{short}\""),
            None => self.to_string(),
        }
    }

    fn short_form(&self) -> Option<String> {
        let target = self.target_text();
        match (&self.ports, self.protocol) {
            (Ports::All, Protocol::Any) => Some(target),
            (Ports::Only(ranges), Protocol::Tcp)
                if ranges.len() == 1 && ranges[0].first == ranges[0].last =>
            {
                let port = ranges[0].first;
                Some(match &self.target {
                    Target::Addr(IpAddr::V6(_)) | Target::Net(IpNet::V6(_)) => {
                        format!("[{target}]:{port}")
                    }
                    _ => format!("{target}:{port}"),
                })
            }
            _ => None,
        }
    }

    fn target_text(&self) -> String {
        match &self.target {
            Target::Host(name) => name.clone(),
            Target::Wildcard(suffix) => format!("*.{suffix}"),
            Target::Addr(addr) => addr.to_string(),
            Target::Net(net) => net.to_string(),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The short form where one exists (`crates.io:443`), else the long form as a YAML flow mapping
/// (`{host: ntp.example.net, ports: [123], protocol: udp}`).
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(short) = self.short_form() {
            return f.write_str(&short);
        }
        let (key, value) = match &self.target {
            Target::Host(_) => ("host", self.target_text()),
            Target::Wildcard(_) => ("host", format!("\"{}\"", self.target_text())),
            Target::Addr(_) => ("ip", self.target_text()),
            Target::Net(_) => ("cidr", self.target_text()),
        };
        write!(f, "{{{key}: {value}")?;
        if let Ports::Only(ranges) = &self.ports {
            let list: Vec<String> = ranges
                .iter()
                .map(|r| {
                    if r.first == r.last {
                        r.to_string()
                    } else {
                        format!("\"{r}\"")
                    }
                })
                .collect();
            write!(f, ", ports: [{}]", list.join(", "))?;
        }
        let default = if self.ports == Ports::All {
            Protocol::Any
        } else {
            Protocol::Tcp
        };
        if self.protocol != default {
            write!(f, ", protocol: {}", self.protocol.as_str())?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Entry {
        parse_short(text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    fn err(text: &str) -> EntryError {
        parse_short(text).expect_err(text)
    }

    #[test]
    fn short_forms_of_the_contract() {
        assert_eq!(
            ok("example.com"),
            Entry::any_port(Target::Host("example.com".into()))
        );
        assert_eq!(
            ok("Example.COM.:443"),
            Entry::tcp_port(Target::Host("example.com".into()), 443)
        );
        assert_eq!(
            ok("*.github.com:443").target,
            Target::Wildcard("github.com".into())
        );
        assert_eq!(
            ok("192.0.2.10").target,
            Target::Addr("192.0.2.10".parse().unwrap())
        );
        assert_eq!(ok("2001:db8::1").ports, Ports::All);
        assert_eq!(
            ok("[2001:db8::1]:8443"),
            Entry::tcp_port(Target::Addr("2001:db8::1".parse().unwrap()), 8443)
        );
        assert_eq!(
            ok("10.20.0.0/16:5432"),
            Entry::tcp_port(Target::Net("10.20.0.0/16".parse().unwrap()), 5432)
        );
        assert_eq!(ok("10.0.0.0/8").ports, Ports::All);
        assert_eq!(
            ok("[2001:db8::/32]:443").target,
            Target::Net("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(ok("2001:db8::/32").protocol, Protocol::Any);
        assert_eq!(
            ok("localhost:5432").target,
            Target::Host("localhost".into())
        );
    }

    #[test]
    fn rejections_name_the_problem_and_the_fix() {
        let e = err("https://example.com/path");
        assert_eq!(
            (e.code, e.help.as_deref()),
            ("url-scheme", Some("write `example.com:443`"))
        );
        assert_eq!(err("example.com/path").code, "path-in-entry");
        assert_eq!(err("example.com?q=1").code, "path-in-entry");
        assert_eq!(err("example.com#x").code, "path-in-entry");
        assert_eq!(err("example.com:0").code, "invalid-port");
        assert_eq!(err("example.com:65536").code, "invalid-port");
        assert_eq!(err("example.com:").code, "invalid-port");
        let e = err("2001:db8:0:0:0:0:0:1:443");
        assert_eq!(
            (e.code, e.help.as_deref()),
            (
                "ipv6-port-unbracketed",
                Some("write `[2001:db8:0:0:0:0:0:1]:443`")
            )
        );
        assert_eq!(err("2001:db8::/32:443").code, "ipv6-port-unbracketed");
        assert_eq!(err("-bad.example.com").code, "invalid-host");
        assert_eq!(err("a..b").code, "invalid-host");
        assert_eq!(err("under_score.example.com").code, "invalid-host");
        assert_eq!(err(&format!("{}.com", "a".repeat(64))).code, "invalid-host");
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(err(&long).code, "invalid-host");
        assert_eq!(err("a*.b.com").code, "invalid-wildcard");
        assert_eq!(err("*.*.com").code, "invalid-wildcard");
        assert_eq!(err("*.com").code, "invalid-wildcard");
        let e = err("10.0.0.1/8");
        assert_eq!(
            (e.code, e.help.as_deref()),
            (
                "cidr-host-bits",
                Some("write `10.0.0.0/8` for the whole block, or `10.0.0.1` for the one address")
            )
        );
        assert_eq!(err("10.0.0.0/33").code, "invalid-cidr");
        assert_eq!(err("").code, "empty-entry");
        assert_eq!(err("   ").code, "empty-entry");
        assert_eq!(err("10.0.0.256").code, "invalid-address");
        assert_eq!(err("[192.0.2.1]:80").code, "invalid-address");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            parse_port_range("8000-8100").unwrap(),
            PortRange {
                first: 8000,
                last: 8100
            }
        );
        assert_eq!(
            parse_port_range("8100-8000").unwrap_err().code,
            "reversed-port-range"
        );
        assert_eq!(
            Ports::normalized(vec![
                PortRange {
                    first: 90,
                    last: 100
                },
                PortRange {
                    first: 80,
                    last: 89
                },
                PortRange {
                    first: 443,
                    last: 443
                }
            ]),
            Ports::Only(smallvec![
                PortRange {
                    first: 80,
                    last: 100
                },
                PortRange {
                    first: 443,
                    last: 443
                }
            ])
        );
        assert_eq!(
            Ports::normalized(vec![PortRange {
                first: 1,
                last: 65535
            }]),
            Ports::All
        );
    }

    #[test]
    fn coverage() {
        assert!(ok("10.0.0.0/8").covers(&ok("10.1.2.3:443")));
        assert!(!ok("10.0.0.0/8:443").covers(&ok("10.1.2.3")));
        assert!(ok("*.example.com").covers(&ok("a.b.example.com:80")));
        assert!(!ok("*.example.com").covers(&ok("example.com")));
        assert!(!ok("*.example.com").covers(&ok("badexample.com")));
        assert!(!ok("example.com").covers(&ok("192.0.2.1")));
    }

    #[test]
    fn display_prefers_the_short_form() {
        for text in [
            "example.com",
            "example.com:443",
            "*.example.com:443",
            "[2001:db8::1]:8443",
            "10.0.0.0/8:22",
        ] {
            assert_eq!(ok(text).to_string(), text);
        }
        let mut e = ok("ntp.example.net");
        e.ports = Ports::Only(smallvec![PortRange {
            first: 123,
            last: 123,
        }]);
        e.protocol = Protocol::Udp;
        assert_eq!(
            e.to_string(),
            "{host: ntp.example.net, ports: [123], protocol: udp}"
        );
    }
}
