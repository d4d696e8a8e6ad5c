//! Warnings for policies that are valid but probably not what their author meant.

use super::entry::Target;
use super::{Composed, Mode};
use crate::diag::Diagnostic;

pub fn lint(policy: &Composed) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    shadowed_allow_entries(policy, &mut found);
    wildcards_under_public_suffixes(policy, &mut found);
    ipv4_only_deny(policy, &mut found);
    empty_allowlist(policy, &mut found);
    found
}

/// An allow entry that a deny entry fully covers can never admit anything.
fn shadowed_allow_entries(policy: &Composed, found: &mut Vec<Diagnostic>) {
    for allow in &policy.allow {
        let Some(deny) = policy.deny.iter().find(|d| d.entry.covers(&allow.entry)) else {
            continue;
        };
        let d = Diagnostic::warning(
            "shadowed-by-deny",
            format!(
                "`{}` is allowed but `{}` denies all of it",
                allow.entry, deny.entry
            ),
        )
        .at(allow.origin.file, allow.origin.span)
        .label("never reachable")
        .related(deny.origin.file, deny.origin.span, "denied here")
        .help("deny always wins: remove the allow entry, or narrow the deny entry");
        found.push(d);
    }
}

/// `*.co.uk` or `*.github.io` admits every registrant's sites under a public suffix.
fn wildcards_under_public_suffixes(policy: &Composed, found: &mut Vec<Diagnostic>) {
    for rule in &policy.allow {
        let Target::Wildcard(suffix) = &rule.entry.target else {
            continue;
        };
        if psl::suffix_str(suffix) != Some(suffix.as_str()) {
            continue;
        }
        let d = Diagnostic::warning(
            "wildcard-public-suffix",
            format!(
                "`*.{suffix}` allows every domain registered under the public suffix `{suffix}`"
            ),
        )
        .at(rule.origin.file, rule.origin.span)
        .help(format!(
            "name the domain you mean, as in `*.example.{suffix}`"
        ));
        found.push(d);
    }
}

/// A deny list of IPv4 addresses in a policy that can reach IPv6 leaves the same services
/// reachable over IPv6 (cloud metadata answers on `fd00:ec2::254` as well).
fn ipv4_only_deny(policy: &Composed, found: &mut Vec<Diagnostic>) {
    let is_v4 = |t: &Target| match t {
        Target::Addr(a) => Some(a.is_ipv4()),
        Target::Net(n) => Some(matches!(n, ipnet::IpNet::V4(_))),
        _ => None,
    };
    let literals: Vec<bool> = policy
        .deny
        .iter()
        .filter_map(|r| is_v4(&r.entry.target))
        .collect();
    if literals.is_empty() || literals.contains(&false) {
        return;
    }
    let reaches_ipv6 = match policy.mode.as_ref().map(|m| m.value) {
        Some(Mode::Open) => true,
        Some(Mode::Allowlist) => policy
            .allow
            .iter()
            .any(|r| r.entry.target.is_name() || is_v4(&r.entry.target) == Some(false)),
        _ => false,
    };
    if !reaches_ipv6 {
        return;
    }
    let first = policy
        .deny
        .iter()
        .find(|r| !r.entry.target.is_name())
        .expect("literals is not empty");
    let d = Diagnostic::warning(
        "ipv4-only",
        "every address in `deny` is IPv4, but this policy can reach IPv6 destinations",
    )
    .at(first.origin.file, first.origin.span)
    .help("deny the IPv6 addresses of the same services too (cloud metadata: `fd00:ec2::254`)");
    found.push(d);
}

fn empty_allowlist(policy: &Composed, found: &mut Vec<Diagnostic>) {
    let Some(mode) = &policy.mode else { return };
    if mode.value != Mode::Allowlist || !policy.allow.is_empty() {
        return;
    }
    let d = Diagnostic::warning(
        "empty-allowlist",
        "`mode: allowlist` with nothing in `allow` reaches only loopback and sbx's DNS service",
    )
    .at(mode.origin.file, mode.origin.span)
    .help("add destinations to `allow`, or say `mode: none` if nothing is meant to be reachable");
    found.push(d);
}
