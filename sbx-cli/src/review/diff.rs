//! `sbx diff`: what access changes between two versions of a policy, after `extends` and
//! merging, and whether it widens. Offline by default: entries are compared by meaning
//! (targets, ports, protocol), never by what names resolve to. With each side's answers
//! (`--resolve`), every address a name resolves to is compared as a destination of its own (see
//! [`address_changes`]), and a removed deny entry that an allowed name's addresses meet now
//! widens even where the offline rule says they cannot (two names that share an address).
//! Answers only add: what they would take away (no allowed name resolves into a removed deny
//! block now) is a note, since whoever answers for a name decides where it resolves next.
//!
//! A change widens when the new policy admits a connection the old one did not:
//! - a mode that reaches more (`none` < `allowlist` < `open`);
//! - an allow entry, or the part of one, that no old allow entry covering its target held
//!   (and that no new deny entry takes away again);
//! - a deny entry, or the part of one, that no new deny entry holds any more, where the new
//!   policy could reach it (in `open` mode always; in `allowlist` mode when an allow entry may
//!   meet its target: names and addresses may always meet; with answers, also names whose
//!   addresses meet);
//! - with answers, an address a name resolves to that the new policy reaches on more ports or
//!   protocols than the old one;
//! - a DNS server added (its answers decide which addresses names reach), or a longer
//!   `dns.grace` (answered addresses stay reachable longer).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::access::Access;
use super::explain::{self, Reason};
use crate::policy::name::is_strictly_below;
use crate::policy::{Entry, Mode, Origin, Policy, Rule, Target};
use crate::resolve::Answers;

/// The changes of one policy file between two sides. A side is `None` when the file is not a
/// policy there (absent, or a base file without a mode).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDiff {
    /// The policy's path, as the new side shows it (the old one's when it was removed).
    pub path: String,
    pub status: Status,
    pub widened: bool,
    pub changes: Vec<Change>,
    /// What the comparison could not see (with `--resolve`: names that did not resolve).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What each side's host names resolve to, each side with its own `dns` settings.
#[derive(Debug, Clone, Copy)]
pub struct Resolution<'a> {
    pub old: &'a Answers,
    pub new: &'a Answers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Added,
    Removed,
    Changed,
    /// A file of the policy changed, and what it admits did not.
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sign {
    Added,
    Removed,
    Changed,
}

impl Sign {
    pub fn symbol(self) -> char {
        match self {
            Sign::Added => '+',
            Sign::Removed => '-',
            Sign::Changed => '~',
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub change: Sign,
    /// `mode`, `allow`, `deny`, `address` (with `--resolve`), `dns.servers`, `dns.timeout`, …
    pub key: &'static str,
    /// The entry, or `old → new` for a setting.
    pub value: String,
    /// `file:line:column` on the side the value comes from (the old side for a removal);
    /// `None` for a default value.
    pub origin: Option<String>,
    pub widens: bool,
    /// The part that widens, when it is less than the entry (`tcp 8443`).
    pub widened: Option<String>,
}

/// The changes between `old` and `new`, either of which may be absent; with `resolution`, by
/// addresses too.
pub fn diff(
    path: String,
    old: Option<&Policy>,
    new: Option<&Policy>,
    resolution: Option<Resolution<'_>>,
) -> PolicyDiff {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    match (old, new) {
        (Some(old), Some(new)) => {
            mode_change(old, new, &mut changes);
            allow_changes(old, new, &mut changes);
            deny_changes(old, new, resolution, &mut changes, &mut notes);
            dns_changes(old, new, &mut changes);
        }
        (None, Some(new)) => {
            let reaches = new.mode.value != Mode::None;
            changes.push(Change {
                change: Sign::Added,
                key: "mode",
                value: new.mode.value.as_str().into(),
                origin: Some(new.mode.origin.to_string()),
                widens: reaches,
                widened: None,
            });
            for rule in &new.allow {
                let rest = Access::of(&rule.entry).minus(&covering(&new.deny, &rule.entry));
                changes.push(entry_change(Sign::Added, "allow", rule, &rest));
            }
            for rule in &new.deny {
                changes.push(entry_change(Sign::Added, "deny", rule, &Access::default()));
            }
        }
        (Some(old), None) => {
            changes.push(Change {
                change: Sign::Removed,
                key: "mode",
                value: old.mode.value.as_str().into(),
                origin: Some(old.mode.origin.to_string()),
                widens: false,
                widened: None,
            });
            for (key, rules) in [("allow", &old.allow), ("deny", &old.deny)] {
                for rule in rules {
                    changes.push(entry_change(Sign::Removed, key, rule, &Access::default()));
                }
            }
        }
        (None, None) => {}
    }
    if let Some(resolution) = resolution {
        address_changes(old, new, resolution, &mut changes, &mut notes);
    }
    let status = match (old, new) {
        (None, Some(_)) => Status::Added,
        (Some(_), None) => Status::Removed,
        _ if changes.is_empty() => Status::Unchanged,
        _ => Status::Changed,
    };
    PolicyDiff {
        path,
        status,
        widened: changes.iter().any(|c| c.widens),
        changes,
        notes,
    }
}

fn rank(mode: Mode) -> u8 {
    match mode {
        Mode::None => 0,
        Mode::Allowlist => 1,
        Mode::Open => 2,
    }
}

fn mode_change(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    let (from, to) = (old.mode.value, new.mode.value);
    if from == to {
        return;
    }
    changes.push(Change {
        change: Sign::Changed,
        key: "mode",
        value: format!("{} → {}", from.as_str(), to.as_str()),
        origin: Some(new.mode.origin.to_string()),
        widens: rank(to) > rank(from),
        widened: None,
    });
}

/// What the entries of `rules` whose targets cover `entry`'s target admit.
fn covering(rules: &[Rule], entry: &Entry) -> Access {
    rules
        .iter()
        .filter(|r| r.entry.target.covers(&entry.target))
        .fold(Access::default(), |a, r| a.union(&Access::of(&r.entry)))
}

fn entry_change(sign: Sign, key: &'static str, rule: &Rule, widened: &Access) -> Change {
    let whole = Access::of(&rule.entry);
    Change {
        change: sign,
        key,
        value: rule.entry.to_string(),
        origin: Some(rule.origin.to_string()),
        widens: !widened.is_empty(),
        widened: (!widened.is_empty() && *widened != whole).then(|| widened.to_string()),
    }
}

fn allow_changes(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    for rule in new.allow.iter().filter(|r| !has(&old.allow, &r.entry)) {
        let gained = match old.mode.value {
            // Open reached everything no deny entry held: what deny held is judged with deny.
            Mode::Open => Access::default(),
            Mode::None => Access::of(&rule.entry),
            Mode::Allowlist => Access::of(&rule.entry).minus(&covering(&old.allow, &rule.entry)),
        };
        let gained = gained.minus(&covering(&new.deny, &rule.entry));
        changes.push(entry_change(Sign::Added, "allow", rule, &gained));
    }
    for rule in old.allow.iter().filter(|r| !has(&new.allow, &r.entry)) {
        changes.push(entry_change(
            Sign::Removed,
            "allow",
            rule,
            &Access::default(),
        ));
    }
}

fn deny_changes(
    old: &Policy,
    new: &Policy,
    resolution: Option<Resolution<'_>>,
    changes: &mut Vec<Change>,
    notes: &mut Vec<String>,
) {
    for rule in new.deny.iter().filter(|r| !has(&old.deny, &r.entry)) {
        changes.push(entry_change(Sign::Added, "deny", rule, &Access::default()));
    }
    for rule in old.deny.iter().filter(|r| !has(&new.deny, &r.entry)) {
        let released = Access::of(&rule.entry).minus(&covering(&new.deny, &rule.entry));
        let meeting = |meets: &dyn Fn(&Target) -> bool| {
            new.allow
                .iter()
                .filter(|a| meets(&a.entry.target))
                .fold(Access::default(), |acc, a| acc.union(&Access::of(&a.entry)))
                .intersect(&released)
        };
        let reachable = match new.mode.value {
            Mode::None => Access::default(),
            Mode::Open => released,
            Mode::Allowlist => {
                let may = meeting(&|t| may_meet(t, &rule.entry.target));
                match resolution {
                    None => may,
                    // Answers add what meets now (two names that share an address); they take
                    // nothing away, since a name may resolve elsewhere tomorrow, and a review
                    // gate must not rest on whoever answers for a name today.
                    Some(r) => {
                        let now = meeting(&|t| {
                            may_meet_resolved((t, r.new), (&rule.entry.target, r.old))
                        });
                        if now.is_empty() && !may.is_empty() {
                            notes.push(format!(
                                "`{}` ({}): no allowed name resolves into it now; it widens \
                                 for where they may resolve later",
                                rule.entry, rule.origin
                            ));
                        }
                        may.union(&now)
                    }
                }
            }
        };
        changes.push(entry_change(Sign::Removed, "deny", rule, &reachable));
    }
}

fn has(rules: &[Rule], entry: &Entry) -> bool {
    rules.iter().any(|r| r.entry == *entry)
}

/// Whether two targets may name a destination in common, offline: a name may resolve to any
/// address, so names and addresses always may.
fn may_meet(a: &Target, b: &Target) -> bool {
    let net = |t: &Target| match t {
        Target::Addr(addr) => Some(IpNet::from(*addr)),
        Target::Net(net) => Some(*net),
        _ => None,
    };
    match (a, b) {
        (Target::Host(x), Target::Host(y)) => x == y,
        (Target::Host(h), Target::Wildcard(s)) | (Target::Wildcard(s), Target::Host(h)) => {
            is_strictly_below(h, s)
        }
        (Target::Wildcard(x), Target::Wildcard(y)) => {
            x == y || is_strictly_below(x, y) || is_strictly_below(y, x)
        }
        _ => match (net(a), net(b)) {
            (Some(x), Some(y)) => x.contains(&y.network()) || y.contains(&x.network()),
            _ => true,
        },
    }
}

/// The addresses a target stands for, when they are known: an address or block as written, a
/// host name by its answer. `None` for a wildcard (its names are the command's to ask) and a
/// name without an answer.
fn known_addresses(target: &Target, answers: &Answers) -> Option<Vec<IpNet>> {
    match target {
        Target::Addr(addr) => Some(vec![IpNet::from(*addr)]),
        Target::Net(net) => Some(vec![*net]),
        Target::Host(name) => match answers.get(name.as_str()) {
            Some(Ok(answer)) => Some(answer.addresses.iter().map(|a| IpNet::from(a.ip)).collect()),
            _ => None,
        },
        Target::Wildcard(_) => None,
    }
}

/// Whether two targets meet by the addresses they have now, where both are known (an allowed
/// name and a denied block or name, when an address is in both); otherwise [`may_meet`].
fn may_meet_resolved(a: (&Target, &Answers), b: (&Target, &Answers)) -> bool {
    if a.0 == b.0 {
        return true;
    }
    match (known_addresses(a.0, a.1), known_addresses(b.0, b.1)) {
        (Some(x), Some(y)) => x.iter().any(|x| {
            y.iter()
                .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
        }),
        _ => may_meet(a.0, b.0),
    }
}

/// Each address a side's host names resolve to, with those names, sorted.
fn addresses_of(answers: &Answers) -> BTreeMap<IpAddr, BTreeSet<&str>> {
    let mut by_addr: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for (name, answer) in answers {
        if let Ok(answer) = answer {
            for a in &answer.addresses {
                by_addr.entry(a.ip).or_default().insert(name.as_str());
            }
        }
    }
    by_addr
}

/// With answers, every address a name of either side resolves to is a destination compared by
/// itself: what the old policy admitted towards it against what the new one admits (address
/// and block entries, the addresses of allowed names, less deny entries and the addresses of
/// denied names), so that a block that now covers an allowed name's address, or a deny entry
/// removed from under one, shows with the name that led to it. More reached widens.
fn address_changes(
    old: Option<&Policy>,
    new: Option<&Policy>,
    resolution: Resolution<'_>,
    changes: &mut Vec<Change>,
    notes: &mut Vec<String>,
) {
    let (old_names, new_names) = (addresses_of(resolution.old), addresses_of(resolution.new));
    let every: BTreeSet<IpAddr> = old_names.keys().chain(new_names.keys()).copied().collect();
    let judge = |policy: Option<&Policy>, answers: &Answers, addr: IpAddr| match policy {
        Some(policy) => explain::judge_address(policy, addr, answers),
        None => (Access::default(), Reason::NotInAllowlist),
    };
    let label = |addr: IpAddr, names: &BTreeMap<IpAddr, BTreeSet<&str>>| {
        let names: Vec<&str> = names
            .get(&addr)
            .map(|n| n.iter().copied().collect())
            .unwrap_or_default();
        format!("{addr} ({})", names.join(", "))
    };
    let origin = |reason: &Reason| match reason {
        Reason::AllowedBy(rule) => Some(rule.origin.to_string()),
        Reason::DeniedBy { deny, .. } | Reason::NameRefused { deny, .. } => {
            Some(deny.origin.to_string())
        }
        Reason::Open(origin) | Reason::ModeNone(origin) => Some(origin.to_string()),
        Reason::NotInAllowlist | Reason::OtherPorts(_) | Reason::HostLoopback => None,
    };
    for addr in every {
        let (before, why_before) = judge(old, resolution.old, addr);
        let (after, why_after) = judge(new, resolution.new, addr);
        let gained = after.minus(&before);
        if !gained.is_empty() {
            // A block and a name's entry may each add some of the gain: all of them are named.
            let admitting: Vec<String> = new
                .map(|p| explain::admitting(p, addr, resolution.new, &gained))
                .unwrap_or_default()
                .iter()
                .map(|r| r.origin.to_string())
                .collect();
            changes.push(Change {
                change: Sign::Added,
                key: "address",
                value: label(addr, &new_names),
                origin: if admitting.is_empty() {
                    origin(&why_after)
                } else {
                    Some(admitting.join(", "))
                },
                widens: true,
                widened: Some(gained.to_string()),
            });
        }
        let lost = before.minus(&after);
        if !lost.is_empty() {
            let names = if old_names.contains_key(&addr) {
                &old_names
            } else {
                &new_names
            };
            // Where it was lost: the deny entry or mode that holds it now, or else the old
            // entry that admitted it.
            let at = match why_after {
                Reason::DeniedBy { .. } | Reason::NameRefused { .. } | Reason::ModeNone(_) => {
                    origin(&why_after)
                }
                _ => origin(&why_before),
            };
            changes.push(Change {
                change: Sign::Removed,
                key: "address",
                value: format!("{}: {lost}", label(addr, names)),
                origin: at,
                widens: false,
                widened: None,
            });
        }
    }
    let failed = |answers: &'_ Answers| -> BTreeMap<String, String> {
        answers
            .iter()
            .filter_map(|(name, a)| Some((name.clone(), a.as_ref().err()?.to_string())))
            .collect()
    };
    let (old_failed, new_failed) = (failed(resolution.old), failed(resolution.new));
    for (name, failure) in &new_failed {
        let side = match old_failed.get(name) {
            Some(before) if before == failure => "either side",
            _ => "the new side",
        };
        notes.push(format!(
            "`{name}` does not resolve on {side} ({failure}): compared by name only"
        ));
    }
    for (name, failure) in old_failed
        .iter()
        .filter(|(name, failure)| new_failed.get(*name) != Some(*failure))
    {
        notes.push(format!(
            "`{name}` does not resolve on the old side ({failure}): compared by name only"
        ));
    }
}

fn dns_changes(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    let (o, n) = (&old.dns, &new.dns);
    let server_origin = |dns: &crate::policy::Dns, at: usize| dns.origins.servers.get(at).cloned();
    for (at, server) in n.servers.iter().enumerate() {
        if !o.servers.contains(server) {
            let origin = server_origin(n, at);
            changes.push(setting(
                Sign::Added,
                "dns.servers",
                server.to_string(),
                origin,
                true,
            ));
        }
    }
    for (at, server) in o.servers.iter().enumerate() {
        if !n.servers.contains(server) {
            let origin = server_origin(o, at);
            changes.push(setting(
                Sign::Removed,
                "dns.servers",
                server.to_string(),
                origin,
                false,
            ));
        }
    }
    // A changed setting is shown where the new side sets it, or, back to its default, where
    // the old side did.
    let at = |new: &Option<Origin>, old: &Option<Origin>| new.clone().or_else(|| old.clone());
    let (no, oo) = (&n.origins, &o.origins);
    let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
    if o.timeout != n.timeout {
        let value = format!("{} → {}", duration(o.timeout), duration(n.timeout));
        let origin = at(&no.timeout, &oo.timeout);
        changes.push(setting(Sign::Changed, "dns.timeout", value, origin, false));
    }
    if o.grace != n.grace {
        let value = format!("{} → {}", duration(o.grace), duration(n.grace));
        let origin = at(&no.grace, &oo.grace);
        let widens = n.grace > o.grace;
        changes.push(setting(Sign::Changed, "dns.grace", value, origin, widens));
    }
    if o.attempts != n.attempts {
        let value = format!("{} → {}", o.attempts, n.attempts);
        let origin = at(&no.attempts, &oo.attempts);
        changes.push(setting(Sign::Changed, "dns.attempts", value, origin, false));
    }
    if o.on_resolve_failure != n.on_resolve_failure {
        let text = |f| match f {
            crate::policy::OnResolveFailure::Error => "error",
            crate::policy::OnResolveFailure::Warn => "warn",
        };
        let value = format!(
            "{} → {}",
            text(o.on_resolve_failure),
            text(n.on_resolve_failure)
        );
        let origin = at(&no.on_resolve_failure, &oo.on_resolve_failure);
        changes.push(setting(
            Sign::Changed,
            "dns.on_resolve_failure",
            value,
            origin,
            false,
        ));
    }
}

/// A DNS setting, at the place it was written (`None`: a default, written nowhere).
fn setting(
    sign: Sign,
    key: &'static str,
    value: String,
    origin: Option<Origin>,
    widens: bool,
) -> Change {
    Change {
        change: sign,
        key,
        value,
        origin: origin.map(|o| o.to_string()),
        widens,
        widened: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Target {
        Target::Addr(text.parse().unwrap())
    }

    #[test]
    fn targets_that_may_meet() {
        let host = |h: &str| Target::Host(h.into());
        let wild = |s: &str| Target::Wildcard(s.into());
        let net = |n: &str| Target::Net(n.parse().unwrap());
        assert!(may_meet(&host("a.example.com"), &wild("example.com")));
        assert!(!may_meet(&host("example.com"), &wild("example.com")));
        assert!(may_meet(&wild("a.example.com"), &wild("example.com")));
        assert!(!may_meet(&host("a.com"), &host("b.com")));
        assert!(may_meet(&host("a.com"), &addr("192.0.2.1")));
        assert!(may_meet(&net("10.0.0.0/8"), &addr("10.1.2.3")));
        assert!(may_meet(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!may_meet(&net("10.0.0.0/8"), &addr("192.0.2.1")));
    }

    #[test]
    fn resolved_names_meet_by_their_addresses() {
        use crate::resolve::{Address, Answer, Failure};
        let answer = |ips: &[&str]| {
            Ok(Answer {
                cnames: Vec::new(),
                addresses: ips
                    .iter()
                    .map(|ip| Address {
                        ip: ip.parse().unwrap(),
                        ttl: 60,
                    })
                    .collect(),
            })
        };
        let answers: Answers = [
            ("a.test".to_string(), answer(&["10.1.2.3"])),
            ("b.test".to_string(), answer(&["10.1.2.3", "192.0.2.9"])),
            ("c.test".to_string(), answer(&["198.51.100.1"])),
            ("gone.test".to_string(), Err(Failure::NxDomain)),
        ]
        .into_iter()
        .collect();
        let host = |h: &str| Target::Host(h.into());
        let net = |n: &str| Target::Net(n.parse().unwrap());
        let meet = |a: &Target, b: &Target| may_meet_resolved((a, &answers), (b, &answers));
        assert!(meet(&host("a.test"), &net("10.0.0.0/8")));
        assert!(!meet(&host("c.test"), &net("10.0.0.0/8")));
        // Two names that share an address meet; offline they do not.
        assert!(meet(&host("a.test"), &host("b.test")));
        assert!(!may_meet(&host("a.test"), &host("b.test")));
        assert!(!meet(&host("a.test"), &host("c.test")));
        // Without an answer, or for a wildcard, the offline rule holds.
        assert!(meet(&host("gone.test"), &net("10.0.0.0/8")));
        assert!(meet(&Target::Wildcard("x.test".into()), &addr("192.0.2.1")));
    }
}
