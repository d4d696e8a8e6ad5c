//! `sbx explain`: whether a policy lets the command reach one destination, and the rule that
//! decides it. Offline by default: names are judged by name, with the function sbx's DNS gate
//! applies to every question ([`pattern_matches`]), and addresses by address. With the answers
//! of sbx's resolver (`--resolve`), a name is judged by the addresses it has now as well, each
//! as the sandbox judges a connection to it (address and block entries, the addresses of the
//! policy's names, deny over allow), and an address by the names that resolve to it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::access::{Access, PortSet};
use crate::policy::name::{HostName, is_strictly_below, pattern_matches};
use crate::policy::{Mode, Origin, Policy, Protocol, Rule, Target};
use crate::resolve::{Answers, Failure};

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
    /// What of the query's ports and protocols the policy allows (with addresses: through every
    /// one of them).
    pub allowed: Access,
    /// For a name, the verdict by name; for an address, by address.
    pub reason: Reason,
    /// With answers, for a name: the addresses it has now, each judged, or why it has none.
    pub addresses: Option<Result<Vec<AddressVerdict>, Failure>>,
    pub notes: Vec<String>,
}

/// One address of a name, judged as a connection to it from the sandbox.
#[derive(Debug, Clone)]
pub struct AddressVerdict {
    pub addr: IpAddr,
    pub verdict: Verdict,
    pub allowed: Access,
    pub reason: Reason,
}

/// What judging a destination needs besides the policy: what the policy's names resolve to
/// (`--resolve`), and the name whose answer led to the address judged.
#[derive(Debug, Clone, Copy, Default)]
struct Context<'a> {
    answers: Option<&'a Answers>,
    /// Set only when sbx's DNS service answers this name: its allow entries then admit the
    /// addresses of its answer, as the service admits them.
    via: Option<&'a HostName>,
}

/// Judges `query` against `policy`, as the sandbox would, offline.
pub fn explain(policy: &Policy, query: &Query) -> Explanation {
    explain_resolved(policy, query, None)
}

/// Judges `query` against `policy`; with `answers` (the policy's host names and, for a name
/// query, the name itself, as sbx's resolver answers them) by addresses too.
pub fn explain_resolved(policy: &Policy, query: &Query, answers: Option<&Answers>) -> Explanation {
    let mut notes = Vec::new();
    let dest = effective_dest(&query.dest, &mut notes);
    let by_dest = judge(policy, &dest, &query.access, Context { answers, via: None });
    let (mut verdict, mut allowed) = (by_dest.verdict, by_dest.allowed.clone());
    let mut addresses = None;
    if let (Some(answers), Dest::Name(name)) = (answers, &dest) {
        let judged = match answers.get(name.as_str()) {
            Some(Ok(answer)) => {
                let via = gate_answers(policy, name).then_some(name);
                let judged: Vec<AddressVerdict> = answer
                    .addresses
                    .iter()
                    .map(|a| {
                        let j = judge(
                            policy,
                            &Dest::Addr(a.ip),
                            &query.access,
                            Context {
                                answers: Some(answers),
                                via,
                            },
                        );
                        AddressVerdict {
                            addr: a.ip,
                            verdict: j.verdict,
                            allowed: j.allowed,
                            reason: j.reason,
                        }
                    })
                    .collect();
                Ok(judged)
            }
            Some(Err(failure)) => Err(failure.clone()),
            None => Err(Failure::Other("not resolved".into())),
        };
        match &judged {
            Ok(list) if !list.is_empty() => {
                let every = list
                    .iter()
                    .fold(query.access.clone(), |acc, a| acc.intersect(&a.allowed));
                let some = list
                    .iter()
                    .fold(Access::default(), |acc, a| acc.union(&a.allowed));
                verdict = if some.is_empty() {
                    Verdict::Denied
                } else if every == query.access {
                    Verdict::Allowed
                } else {
                    Verdict::Partly
                };
                allowed = every;
                if by_dest.verdict == Verdict::Denied && !some.is_empty() {
                    notes.push(format!(
                        "the command cannot have `{name}` answered by sbx's DNS service, but \
                         reaches its addresses by address"
                    ));
                }
            }
            Ok(_) => {}
            Err(failure) => notes.push(format!(
                "`{name}` does not resolve now ({failure}): judged by name only"
            )),
        }
        addresses = Some(judged);
    } else {
        offline_notes(
            policy,
            &dest,
            by_dest.verdict,
            &by_dest.reason,
            answers.is_some(),
            &mut notes,
        );
    }
    if is_host_loopback(&dest) {
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
        reason: by_dest.reason,
        addresses,
        notes,
    }
}

/// What `policy` admits towards `addr` from the start of a sandbox, with the policy's names
/// resolved as `answers` says: its address and block entries and the addresses of its host
/// names, less what deny entries hold. `sbx diff --resolve` compares this per address.
pub fn judge_address(policy: &Policy, addr: IpAddr, answers: &Answers) -> (Access, Reason) {
    let j = judge(
        policy,
        &Dest::Addr(addr),
        &Access::everything(),
        Context {
            answers: Some(answers),
            via: None,
        },
    );
    (j.allowed, j.reason)
}

/// The allow entries of `policy` that admit some of `within` towards `addr`, with the policy's
/// names resolved as `answers` says.
pub fn admitting<'p>(
    policy: &'p Policy,
    addr: IpAddr,
    answers: &Answers,
    within: &Access,
) -> Vec<&'p Rule> {
    let cx = Context {
        answers: Some(answers),
        via: None,
    };
    let dest = Dest::Addr(addr);
    allow_rules(policy, &dest, &started_names(policy, &dest, cx), cx)
        .into_iter()
        .filter(|r| Access::of(&r.entry).overlaps(within))
        .collect()
}

/// Whether sbx's DNS service answers the command's question for `name`: in allowlist mode,
/// when an allow entry names it and no deny entry does.
fn gate_answers(policy: &Policy, name: &HostName) -> bool {
    let dest = Dest::Name(name.clone());
    let named = |rules: &[Rule]| {
        rules
            .iter()
            .any(|r| names(&r.entry.target, &dest, Context::default()))
    };
    policy.mode.value == Mode::Allowlist && named(&policy.allow) && !named(&policy.deny)
}

struct Judged {
    verdict: Verdict,
    allowed: Access,
    reason: Reason,
}

/// At an address, with answers: the allowed exact names that resolve to it, whose answers sbx
/// admits when the sandbox starts.
fn started_names<'p>(policy: &'p Policy, dest: &Dest, cx: Context<'_>) -> Vec<&'p str> {
    match dest {
        Dest::Addr(addr) => policy
            .allow
            .iter()
            .filter_map(|r| match &r.entry.target {
                Target::Host(h) if resolves_to(cx.answers, h, *addr) => Some(h.as_str()),
                _ => None,
            })
            .collect(),
        Dest::Name(_) => Vec::new(),
    }
}

/// Whether an entry applies to the addresses sbx admits at start for `started` names: an exact
/// name among them, or a wildcard above one (for allow entries, as the DNS service admits any
/// answer; for deny entries, since a deny wildcard denies the start-up addresses of the allowed
/// names below it).
fn covers_started(target: &Target, started: &[&str]) -> bool {
    match target {
        Target::Host(h) => started.contains(&h.as_str()),
        Target::Wildcard(suffix) => started.iter().any(|n| is_strictly_below(n, suffix)),
        _ => false,
    }
}

/// The allow entries that name the destination. At an address, with answers, also those that
/// match an allowed exact name resolving to it: sbx admits each such name's answer when the
/// sandbox starts, for the ports of every allow entry that matches the name, wildcards included
/// (as the DNS service admits any answer).
fn allow_rules<'p>(
    policy: &'p Policy,
    dest: &Dest,
    started: &[&str],
    cx: Context<'_>,
) -> Vec<&'p Rule> {
    policy
        .allow
        .iter()
        .filter(|r| names(&r.entry.target, dest, cx) || covers_started(&r.entry.target, started))
        .collect()
}

/// The verdict for one destination (a name by name, an address by address) and its reason.
fn judge(policy: &Policy, dest: &Dest, asked_for: &Access, cx: Context<'_>) -> Judged {
    let started = started_names(policy, dest, cx);
    let allow = allow_rules(policy, dest, &started, cx);
    let deny: Vec<&Rule> = policy
        .deny
        .iter()
        .filter(|r| {
            names(&r.entry.target, dest, cx)
                || (matches!(r.entry.target, Target::Wildcard(_))
                    && covers_started(&r.entry.target, &started))
        })
        .collect();
    let mode = policy.mode.value;
    let loopback = is_host_loopback(dest);
    // The DNS gate answers a name only when no deny pattern covers it: a denied name cannot be
    // asked for, on any port.
    let name_refused = match (dest, mode) {
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
    let allowed = admitted.minus(&denied).intersect(asked_for);
    let verdict = if allowed.is_empty() {
        Verdict::Denied
    } else if allowed == *asked_for {
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
            let asked = admitted.intersect(asked_for);
            if mode == Mode::None {
                Reason::ModeNone(policy.mode.origin.clone())
            } else if let Some(rule) = name_refused {
                Reason::NameRefused {
                    deny: (*rule).clone(),
                    allow: first_allow(asked_for),
                }
            } else if loopback && mode == Mode::Open {
                Reason::HostLoopback
            } else if let Some(rule) = deny
                .iter()
                .find(|r| Access::of(&r.entry).overlaps(&asked))
                .or_else(|| {
                    deny.iter()
                        .find(|r| Access::of(&r.entry).overlaps(asked_for))
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
    Judged {
        verdict,
        allowed,
        reason,
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

/// Whether an entry's target names the destination: names by the DNS gate's rule, addresses
/// by address. With answers, a host name names the addresses it resolves to (sbx resolves
/// exact names when the sandbox starts and enforces their addresses, `deny` ones included);
/// through `via`, a name pattern names the addresses of the name it matches.
fn names(target: &Target, dest: &Dest, cx: Context<'_>) -> bool {
    match (target, dest) {
        (Target::Host(host), Dest::Name(name)) => pattern_matches(host, name),
        (Target::Wildcard(suffix), Dest::Name(name)) => {
            pattern_matches(&format!("*.{suffix}"), name)
        }
        (Target::Addr(a), Dest::Addr(addr)) => a == addr,
        (Target::Net(net), Dest::Addr(addr)) => net.contains(addr),
        (Target::Host(host), Dest::Addr(addr)) => {
            resolves_to(cx.answers, host, *addr) || cx.via.is_some_and(|n| pattern_matches(host, n))
        }
        (Target::Wildcard(suffix), Dest::Addr(_)) => cx
            .via
            .is_some_and(|n| pattern_matches(&format!("*.{suffix}"), n)),
        _ => false,
    }
}

fn resolves_to(answers: Option<&Answers>, name: &str, addr: IpAddr) -> bool {
    answers
        .and_then(|a| a.get(name))
        .and_then(|r| r.as_ref().ok())
        .is_some_and(|answer| answer.addresses.iter().any(|a| a.ip == addr))
}

/// What judging leaves open, said only where it could change the verdict. Offline, that is
/// every name against address entries and the other way round; with answers, only wildcards,
/// whose names are known when the command asks for them.
fn offline_notes(
    policy: &Policy,
    dest: &Dest,
    verdict: Verdict,
    reason: &Reason,
    resolved: bool,
    notes: &mut Vec<String>,
) {
    let mode = policy.mode.value;
    if mode == Mode::None {
        return;
    }
    let first = |rules: &[Rule], names: bool| {
        rules
            .iter()
            .find(|r| {
                r.entry.target.is_name() == names
                    && (!resolved || matches!(r.entry.target, Target::Wildcard(_)))
            })
            .map(|r| format!("`{}` ({})", r.entry, r.origin))
    };
    match dest {
        Dest::Name(name) => {
            if verdict != Verdict::Denied
                && let Some(rule) = first(&policy.deny, false)
            {
                notes.push(format!(
                    "judged by name: deny entries of addresses and blocks, such as {rule}, \
                     also hold the addresses `{name}` resolves to, if it resolves into them \
                     (`sbx explain --resolve` looks)"
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
                && !resolved
                && let Some(rule) = first(&policy.deny, true)
            {
                notes.push(format!(
                    "judged by address: a denied name, such as {rule}, takes {addr} away if it \
                     resolves to it (`sbx explain --resolve` looks)"
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
    let resolved = matches!(&e.addresses, Some(Ok(list)) if !list.is_empty());
    let _ = writeln!(
        w,
        "{}: {} by policy {} (mode: {}){}",
        e.query,
        e.verdict.as_str(),
        policy.name,
        policy.mode.value.as_str(),
        if resolved {
            ", by the addresses the name has now"
        } else {
            ""
        }
    );
    if e.verdict == Verdict::Partly && !resolved {
        let _ = writeln!(w, "  allowed: {}", e.allowed);
    }
    let query_name = match &e.query.dest {
        Dest::Name(name) => Some(name.as_str()),
        Dest::Addr(_) => None,
    };
    let at_addr = match &e.query.dest {
        Dest::Addr(addr) => Some(*addr),
        Dest::Name(_) => None,
    };
    let lines = reason_lines(&e.reason, at_addr, query_name);
    let by_name = e.addresses.is_some();
    for (i, line) in lines.iter().enumerate() {
        let prefix = if by_name && i == 0 { "by name: " } else { "" };
        let _ = writeln!(w, "  {prefix}{line}");
    }
    if let Some(Ok(list)) = &e.addresses {
        for a in list {
            let mut head = format!("  {}: {}", a.addr, a.verdict.as_str());
            if a.verdict == Verdict::Partly {
                head.push_str(&format!(" ({})", a.allowed));
            }
            let _ = writeln!(w, "{head}");
            for line in reason_lines(&a.reason, Some(a.addr), query_name) {
                let _ = writeln!(w, "    {line}");
            }
        }
    }
    for note in &e.notes {
        let _ = writeln!(w, "  note: {note}");
    }
    out
}

/// The lines that say why. At an address, a host name entry holds it through the name's
/// answer, which is said unless the name is the one asked about.
fn reason_lines(reason: &Reason, addr: Option<IpAddr>, asked: Option<&str>) -> Vec<String> {
    let rule = |r: &Rule, role: &str| {
        let mut text = format!("{role} `{}` at {}", r.entry, r.origin);
        if let (Some(addr), Target::Host(host)) = (addr, &r.entry.target)
            && asked != Some(host.as_str())
        {
            text.push_str(&format!(", as `{host}` resolves to {addr}"));
        }
        text
    };
    match reason {
        Reason::AllowedBy(r) => vec![rule(r, "allowed by")],
        Reason::Open(origin) => vec![format!(
            "`mode: open` at {origin} admits everything no deny entry holds"
        )],
        Reason::ModeNone(origin) => vec![format!(
            "`mode: none` at {origin}: nothing but the command's own loopback"
        )],
        Reason::DeniedBy { deny, allow } => {
            let mut lines = vec![rule(deny, "denied by")];
            if let Some(allow) = allow {
                lines.push(format!("{} (deny wins)", rule(allow, "over")));
            }
            lines
        }
        Reason::NameRefused { deny, allow } => {
            let mut lines = vec![
                rule(deny, "denied by"),
                "sbx's DNS service refuses a name that a deny entry names, on every port".into(),
            ];
            if let Some(allow) = allow {
                lines.push(format!("{} (deny wins)", rule(allow, "over")));
            }
            lines
        }
        Reason::NotInAllowlist => {
            let mut line = "not in the allowlist: no allow entry names it".to_string();
            if addr.is_none() && asked.is_some() {
                line.push_str(" (sbx's DNS service refuses the name)");
            }
            vec![line]
        }
        Reason::OtherPorts(rules) => rules
            .iter()
            .map(|r| {
                format!(
                    "{} names it for {} only",
                    rule(r, "").trim_start(),
                    Access::of(&r.entry)
                )
            })
            .collect(),
        Reason::HostLoopback => vec![
            "the host's loopback is reachable only through an allow entry that names it".into(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{Address, Answer};

    fn policy(text: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, text).unwrap();
        let mut loader = crate::policy::Loader::new();
        loader.load(&path).expect("a valid policy")
    }

    fn answers(entries: &[(&str, &str)]) -> Answers {
        entries
            .iter()
            .map(|(name, ip)| {
                let answer = Answer {
                    cnames: Vec::new(),
                    addresses: vec![Address {
                        ip: ip.parse().unwrap(),
                        ttl: 60,
                    }],
                };
                (name.to_string(), Ok(answer))
            })
            .collect()
    }

    /// An exact name's answer is admitted at start for the ports of every allow entry that
    /// matches the name, as the sandbox's DNS service admits it; a deny wildcard holds no
    /// address, a deny name holds its own.
    #[test]
    fn addresses_as_the_sandbox_admits_them_at_start() {
        let p = policy(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - api.x.test:443\n\
             \x20   - \"*.x.test:8080\"\n  deny:\n    - \"*.y.test\"\n    - bad.test:22\n",
        );
        let a = answers(&[
            ("api.x.test", "192.0.2.1"),
            ("bad.test", "192.0.2.1"),
            ("other.x.test", "192.0.2.2"),
        ]);
        let (access, _) = judge_address(&p, "192.0.2.1".parse().unwrap(), &a);
        assert_eq!(access.to_string(), "tcp 443,8080");
        // A name under the wildcard, not in the policy, is admitted only when asked for.
        let (access, reason) = judge_address(&p, "192.0.2.2".parse().unwrap(), &a);
        assert!(access.is_empty());
        assert!(matches!(reason, Reason::NotInAllowlist));
        let q = Query::parse("other.x.test:8080").unwrap();
        let e = explain_resolved(&p, &q, Some(&a));
        assert_eq!(e.verdict, Verdict::Allowed);
        // A deny name holds its address on its own ports, whichever name leads there.
        let q = Query::parse("api.x.test:22").unwrap();
        let e = explain_resolved(&p, &q, Some(&a));
        assert_eq!(e.verdict, Verdict::Denied);
        let Some(Ok(list)) = &e.addresses else {
            panic!("{e:?}")
        };
        assert!(
            matches!(&list[0].reason, Reason::DeniedBy { deny, .. } if deny.entry.to_string() == "bad.test:22"),
            "{list:?}"
        );
    }

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
