//! `sbx explain`: whether a policy lets the command reach one destination, and the rule that
//! decides it. Offline: names are judged by name, with the function sbx's DNS gate applies to
//! every question ([`pattern_matches`]), and addresses by address; what a name resolves to is
//! not looked up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::access::{Access, PortSet};
use crate::policy::name::{HostName, is_strictly_below, pattern_matches};
use crate::policy::{Mode, Origin, Policy, Protocol, Rule, Target};

/// A destination as `sbx explain` and policy tests take it: `DEST[:PORT][/PROTO]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub dest: Dest,
    /// The ports and protocols asked about: one port of one protocol, or with no port every
    /// port (of the protocol, when one is given).
    pub access: Access,
    /// What the user wrote, for messages.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Name(HostName),
    Addr(IpAddr),
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Query {
    /// `github.com:443`, `api.example.com:53/udp`, `10.1.2.3`, `[2001:db8::1]:443/tcp`. A port
    /// without a protocol means TCP, as in a policy's short form.
    pub fn parse(text: &str) -> Result<Query, String> {
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((rest, proto)) => match Protocol::parse(proto) {
                Ok(p) => (rest, Some(p)),
                Err(_) => {
                    return Err(format!(
                        "`{text}`: `/{proto}` is not a protocol (use /tcp, /udp or /any)"
                    ));
                }
            },
            None => (text, None),
        };
        let (dest, port) = split_port(rest).map_err(|why| format!("`{text}`: {why}"))?;
        let dest = match dest.parse::<IpAddr>() {
            Ok(addr) => Dest::Addr(addr),
            Err(_) => Dest::Name(HostName::parse(dest).map_err(|why| {
                format!("`{dest}` is neither an IP address nor a host name: {why}")
            })?),
        };
        let ports = match port {
            Some(port) => PortSet::single(port),
            None => PortSet::all(),
        };
        let access = match (protocol, port) {
            (None, None) => Access::everything(),
            (None | Some(Protocol::Tcp), _) => Access {
                tcp: ports,
                ..Access::default()
            },
            (Some(Protocol::Udp), _) => Access {
                udp: ports,
                ..Access::default()
            },
            (Some(Protocol::Any), Some(_)) => Access {
                tcp: ports.clone(),
                udp: ports,
                other: false,
            },
            (Some(Protocol::Any), None) => Access::everything(),
        };
        Ok(Query {
            dest,
            access,
            text: text.to_string(),
        })
    }
}

fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
    };
    if let Some(inner) = text.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or("`[` without a closing `]`")?;
        return match after {
            "" => Ok((addr, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((addr, Some(port(p)?))),
                None => Err(format!("expected `:PORT` after `]`, found `{after}`")),
            },
        };
    }
    // Two colons or more: an IPv6 address, which takes a port only in brackets.
    if text.matches(':').count() > 1 {
        return Ok((text, None));
    }
    match text.split_once(':') {
        Some((dest, p)) => Ok((dest, Some(port(p)?))),
        None => Ok((text, None)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
    /// Some of the ports or protocols asked about are allowed, not all.
    Partly,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Partly => "partly allowed",
        }
    }
}

/// Why: the rule (or the mode) that decides the verdict.
#[derive(Debug, Clone)]
pub enum Reason {
    AllowedBy(Rule),
    /// `mode: open` admits everything no deny entry holds.
    Open(Origin),
    /// `mode: none`: nothing but the command's own loopback.
    ModeNone(Origin),
    /// A deny entry holds it; deny wins over the allow entry, when one matched.
    DeniedBy {
        deny: Rule,
        allow: Option<Rule>,
    },
    /// A deny entry names the name: sbx's DNS service refuses it, whatever the ports.
    NameRefused {
        deny: Rule,
        allow: Option<Rule>,
    },
    /// No allow entry names the destination.
    NotInAllowlist,
    /// Allow entries name the destination, for other ports or protocols.
    OtherPorts(Vec<Rule>),
    /// The host's own loopback, which only an entry naming it opens, in every mode.
    HostLoopback,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub query: Query,
    pub verdict: Verdict,
    /// What of the query's ports and protocols the policy allows.
    pub allowed: Access,
    pub reason: Reason,
    pub notes: Vec<String>,
}

/// Judges `query` against `policy`, as the sandbox would.
pub fn explain(policy: &Policy, query: &Query) -> Explanation {
    let mut notes = Vec::new();
    let dest = effective_dest(&query.dest, &mut notes);
    let allow: Vec<&Rule> = policy
        .allow
        .iter()
        .filter(|r| names(&r.entry.target, &dest))
        .collect();
    let deny: Vec<&Rule> = policy
        .deny
        .iter()
        .filter(|r| names(&r.entry.target, &dest))
        .collect();
    let mode = policy.mode.value;
    let loopback = is_host_loopback(&dest);
    // The DNS gate answers a name only when no deny pattern covers it: a denied name cannot be
    // asked for, on any port.
    let name_refused = match (&dest, mode) {
        (Dest::Name(_), Mode::Allowlist) => deny.iter().find(|r| r.entry.target.is_name()),
        _ => None,
    };
    let admitted = match mode {
        Mode::None => Access::default(),
        Mode::Allowlist => allow
            .iter()
            .fold(Access::default(), |a, r| a.union(&Access::of(&r.entry))),
        Mode::Open if loopback => Access::default(),
        Mode::Open => Access::everything(),
    };
    let denied = if name_refused.is_some() {
        Access::everything()
    } else {
        deny.iter()
            .filter(|r| mode != Mode::Open || !matches!(r.entry.target, Target::Wildcard(_)))
            .fold(Access::default(), |a, r| a.union(&Access::of(&r.entry)))
    };
    let allowed = admitted.minus(&denied).intersect(&query.access);
    let verdict = if allowed.is_empty() {
        Verdict::Denied
    } else if allowed == query.access {
        Verdict::Allowed
    } else {
        Verdict::Partly
    };
    let first_allow = |within: &Access| {
        allow
            .iter()
            .find(|r| Access::of(&r.entry).overlaps(within))
            .map(|r| (*r).clone())
    };
    let reason = match verdict {
        Verdict::Allowed | Verdict::Partly => match mode {
            Mode::Open => Reason::Open(policy.mode.origin.clone()),
            _ => Reason::AllowedBy(first_allow(&allowed).expect("allowed through an entry")),
        },
        Verdict::Denied => {
            let asked = admitted.intersect(&query.access);
            if mode == Mode::None {
                Reason::ModeNone(policy.mode.origin.clone())
            } else if let Some(rule) = name_refused {
                Reason::NameRefused {
                    deny: (*rule).clone(),
                    allow: first_allow(&query.access),
                }
            } else if loopback && mode == Mode::Open {
                Reason::HostLoopback
            } else if let Some(rule) = deny
                .iter()
                .find(|r| Access::of(&r.entry).overlaps(&asked))
                .or_else(|| {
                    deny.iter()
                        .find(|r| Access::of(&r.entry).overlaps(&query.access))
                })
            {
                Reason::DeniedBy {
                    deny: (*rule).clone(),
                    allow: first_allow(&asked),
                }
            } else if allow.is_empty() {
                if loopback {
                    Reason::HostLoopback
                } else {
                    Reason::NotInAllowlist
                }
            } else {
                Reason::OtherPorts(allow.iter().map(|r| (*r).clone()).collect())
            }
        }
    };
    offline_notes(policy, &dest, verdict, &reason, &mut notes);
    if loopback {
        notes.push(
            "this is the host's loopback: a server the command starts itself is always \
             reachable there, and the host's services only through an entry that names them"
                .into(),
        );
    }
    Explanation {
        query: query.clone(),
        verdict,
        allowed,
        reason,
        notes,
    }
}

/// Addresses as the sandbox judges them: IPv4-mapped as IPv4, the unspecified addresses as the
/// loopback the kernel sends them to.
fn effective_dest(dest: &Dest, notes: &mut Vec<String>) -> Dest {
    let Dest::Addr(addr) = dest else {
        return dest.clone();
    };
    let mapped = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*addr, IpAddr::V4),
        IpAddr::V4(_) => *addr,
    };
    let judged = match mapped {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    if judged != *addr {
        notes.push(format!("judged as {judged}, where the kernel sends {addr}"));
    }
    Dest::Addr(judged)
}

fn is_host_loopback(dest: &Dest) -> bool {
    match dest {
        Dest::Addr(addr) => addr.is_loopback(),
        Dest::Name(name) => {
            name.as_str() == "localhost" || is_strictly_below(name.as_str(), "localhost")
        }
    }
}

/// Whether an entry's target names the destination, offline: names by the DNS gate's rule,
/// addresses by address. A name never names an address here, nor the other way round.
fn names(target: &Target, dest: &Dest) -> bool {
    match (target, dest) {
        (Target::Host(host), Dest::Name(name)) => pattern_matches(host, name),
        (Target::Wildcard(suffix), Dest::Name(name)) => {
            pattern_matches(&format!("*.{suffix}"), name)
        }
        (Target::Addr(a), Dest::Addr(addr)) => a == addr,
        (Target::Net(net), Dest::Addr(addr)) => net.contains(addr),
        _ => false,
    }
}

/// What judging offline leaves open, said only where it could change the verdict.
fn offline_notes(
    policy: &Policy,
    dest: &Dest,
    verdict: Verdict,
    reason: &Reason,
    notes: &mut Vec<String>,
) {
    let mode = policy.mode.value;
    if mode == Mode::None {
        return;
    }
    let first = |rules: &[Rule], names: bool| {
        rules
            .iter()
            .find(|r| r.entry.target.is_name() == names)
            .map(|r| format!("`{}` ({})", r.entry, r.origin))
    };
    match dest {
        Dest::Name(name) => {
            if verdict != Verdict::Denied
                && let Some(rule) = first(&policy.deny, false)
            {
                notes.push(format!(
                    "judged by name: deny entries of addresses and blocks, such as {rule}, \
                     also hold the addresses `{name}` resolves to, if it resolves into them"
                ));
            }
        }
        Dest::Addr(addr) => {
            if verdict != Verdict::Allowed
                && mode == Mode::Allowlist
                && !matches!(reason, Reason::DeniedBy { .. })
                && let Some(rule) = first(&policy.allow, true)
            {
                notes.push(format!(
                    "judged by address: an allowed name, such as {rule}, admits {addr} for its \
                     ports when sbx's DNS service answers that name with it"
                ));
            }
            if verdict != Verdict::Denied
                && let Some(rule) = first(&policy.deny, true)
            {
                notes.push(format!(
                    "judged by address: a denied name, such as {rule}, takes {addr} away if it \
                     resolves to it"
                ));
            }
        }
    }
}

/// The explanation as `sbx explain` prints it.
pub fn render(e: &Explanation, policy: &Policy) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "{}: {} by policy {} (mode: {})",
        e.query,
        e.verdict.as_str(),
        policy.name,
        policy.mode.value.as_str()
    );
    if e.verdict == Verdict::Partly {
        let _ = writeln!(w, "  allowed: {}", e.allowed);
    }
    let rule = |r: &Rule, role: &str| format!("  {role} `{}` at {}", r.entry, r.origin);
    match &e.reason {
        Reason::AllowedBy(r) => {
            let _ = writeln!(w, "{}", rule(r, "allowed by"));
        }
        Reason::Open(origin) => {
            let _ = writeln!(
                w,
                "  `mode: open` at {origin} admits everything no deny entry holds"
            );
        }
        Reason::ModeNone(origin) => {
            let _ = writeln!(
                w,
                "  `mode: none` at {origin}: nothing but the command's own loopback"
            );
        }
        Reason::DeniedBy { deny, allow } => {
            let _ = writeln!(w, "{}", rule(deny, "denied by"));
            if let Some(allow) = allow {
                let _ = writeln!(w, "{} (deny wins)", rule(allow, "over"));
            }
        }
        Reason::NameRefused { deny, allow } => {
            let _ = writeln!(w, "{}", rule(deny, "denied by"));
            let _ = writeln!(
                w,
                "  sbx's DNS service refuses a name that a deny entry names, on every port"
            );
            if let Some(allow) = allow {
                let _ = writeln!(w, "{} (deny wins)", rule(allow, "over"));
            }
        }
        Reason::NotInAllowlist => {
            let _ = writeln!(w, "  not in the allowlist: no allow entry names it");
        }
        Reason::OtherPorts(rules) => {
            for r in rules {
                let _ = writeln!(
                    w,
                    "  `{}` at {} names it for {} only",
                    r.entry,
                    r.origin,
                    Access::of(&r.entry)
                );
            }
        }
        Reason::HostLoopback => {
            let _ = writeln!(
                w,
                "  the host's loopback is reachable only through an allow entry that names it"
            );
        }
    }
    for note in &e.notes {
        let _ = writeln!(w, "  note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = Query::parse("GitHub.com:443").unwrap();
        assert_eq!(q.dest, Dest::Name(HostName::parse("github.com").unwrap()));
        assert_eq!(q.access.to_string(), "tcp 443");
        assert_eq!(
            Query::parse("ntp.example.net:123/udp")
                .unwrap()
                .access
                .to_string(),
            "udp 123"
        );
        assert_eq!(
            Query::parse("[2001:db8::1]:443/any")
                .unwrap()
                .access
                .to_string(),
            "tcp 443; udp 443"
        );
        assert_eq!(
            Query::parse("2001:db8::1").unwrap().dest,
            Dest::Addr("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            Query::parse("10.0.0.1").unwrap().access,
            Access::everything()
        );
        assert!(Query::parse("example.com:0").is_err());
        assert!(Query::parse("example.com:443/sctp").is_err());
        assert!(Query::parse("bad_name.example.com").is_err());
    }
}
