//! `sbx diff`: what access changes between two versions of a policy, after `extends` and
//! merging, and whether it widens. Offline: entries are compared by meaning (targets, ports,
//! protocol), never by what names resolve to.
//!
//! A change widens when the new policy admits a connection the old one did not:
//! - a mode that reaches more (`none` < `allowlist` < `open`);
//! - an allow entry, or the part of one, that no old allow entry covering its target held
//!   (and that no new deny entry takes away again);
//! - a deny entry, or the part of one, that no new deny entry holds any more, where the new
//!   policy could reach it (in `open` mode always; in `allowlist` mode when an allow entry may
//!   meet its target: names and addresses may always meet, since resolution is not compared);
//! - a DNS server added (its answers decide which addresses names reach), or a longer
//!   `dns.grace` (answered addresses stay reachable longer).

use ipnet::IpNet;
use serde::Serialize;

use super::access::Access;
use crate::policy::name::is_strictly_below;
use crate::policy::{Entry, Mode, Policy, Rule, Target};

/// The changes of one policy file between two sides. A side is `None` when the file is not a
/// policy there (absent, or a base file without a mode).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDiff {
    /// The policy's path, as the new side shows it (the old one's when it was removed).
    pub path: String,
    pub status: Status,
    pub widened: bool,
    pub changes: Vec<Change>,
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
    /// `mode`, `allow`, `deny`, `dns.servers`, `dns.timeout`, …
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

/// The changes between `old` and `new`, either of which may be absent.
pub fn diff(path: String, old: Option<&Policy>, new: Option<&Policy>) -> PolicyDiff {
    let mut changes = Vec::new();
    match (old, new) {
        (Some(old), Some(new)) => {
            mode_change(old, new, &mut changes);
            allow_changes(old, new, &mut changes);
            deny_changes(old, new, &mut changes);
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

fn deny_changes(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    for rule in new.deny.iter().filter(|r| !has(&old.deny, &r.entry)) {
        changes.push(entry_change(Sign::Added, "deny", rule, &Access::default()));
    }
    for rule in old.deny.iter().filter(|r| !has(&new.deny, &r.entry)) {
        let released = Access::of(&rule.entry).minus(&covering(&new.deny, &rule.entry));
        let reachable = match new.mode.value {
            Mode::None => Access::default(),
            Mode::Open => released,
            Mode::Allowlist => new
                .allow
                .iter()
                .filter(|a| may_meet(&a.entry.target, &rule.entry.target))
                .fold(Access::default(), |acc, a| acc.union(&Access::of(&a.entry)))
                .intersect(&released),
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

fn dns_changes(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    let (o, n) = (&old.dns, &new.dns);
    for server in n.servers.iter().filter(|s| !o.servers.contains(s)) {
        changes.push(setting(
            Sign::Added,
            "dns.servers",
            server.to_string(),
            true,
        ));
    }
    for server in o.servers.iter().filter(|s| !n.servers.contains(s)) {
        changes.push(setting(
            Sign::Removed,
            "dns.servers",
            server.to_string(),
            false,
        ));
    }
    let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
    if o.timeout != n.timeout {
        let value = format!("{} → {}", duration(o.timeout), duration(n.timeout));
        changes.push(setting(Sign::Changed, "dns.timeout", value, false));
    }
    if o.grace != n.grace {
        let value = format!("{} → {}", duration(o.grace), duration(n.grace));
        changes.push(setting(
            Sign::Changed,
            "dns.grace",
            value,
            n.grace > o.grace,
        ));
    }
    if o.attempts != n.attempts {
        let value = format!("{} → {}", o.attempts, n.attempts);
        changes.push(setting(Sign::Changed, "dns.attempts", value, false));
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
        changes.push(setting(
            Sign::Changed,
            "dns.on_resolve_failure",
            value,
            false,
        ));
    }
}

/// A DNS setting: the policy keeps no provenance for these once composed.
fn setting(sign: Sign, key: &'static str, value: String, widens: bool) -> Change {
    Change {
        change: sign,
        key,
        value,
        origin: None,
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
}
