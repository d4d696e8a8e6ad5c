//! The Plan stage: a composed policy with its names resolved, normalised into the rule sets both
//! enforcement backends consume.
//!
//! A connection to address A, port P, protocol T is admitted when some `allow` rule set holds
//! (A, P, T) and no `deny` rule set does (in `open` mode, when no `deny` rule set does). Each
//! rule set is (protocol, ports, addresses): entries with the same ports and protocol share one
//! set, overlapping and adjacent CIDR blocks merged. Wildcards, and in `allowlist` mode every
//! name, are also kept as name rules for the DNS service that answers the sandboxed command.
//! The same inputs give the same plan, byte for byte: everything is sorted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::diag::Diagnostic;
use crate::policy::name::HostName;
use crate::policy::{
    Entry, Loader, Mode, OnResolveFailure, Origin, Policy, Ports, Protocol, Rule, Target,
};
use crate::resolve::{Answer, Failure, Resolver};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    pub mode: Mode,
    pub files: Vec<String>,
    pub dns_servers: Vec<String>,
    /// How long an answered address stays reachable past its TTL.
    #[serde(serialize_with = "duration_as_text")]
    pub dns_grace: std::time::Duration,
    pub allow: Vec<RuleSet>,
    pub deny: Vec<RuleSet>,
    /// What the DNS service decides by name: wildcards always, names in `allowlist` mode.
    pub names: Vec<NameRule>,
    /// Every name sbx resolved, with its answer or failure.
    pub resolved: Vec<Resolved>,
    /// `file:line:column: code: message`, for the policy's lints and resolution warnings.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    pub protocol: Protocol,
    #[serde(serialize_with = "ports_as_text")]
    pub ports: Ports,
    /// Sorted; overlapping and adjacent blocks merged.
    pub addresses: Vec<IpNet>,
    /// The entries that contributed, in policy order.
    pub sources: Vec<Source>,
}

impl RuleSet {
    /// Whether an address or block of the policy itself (not a name's answer) is in the set.
    pub fn has_literal_addresses(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.name.is_none() && !s.addresses.is_empty())
    }
}

/// Kept typed and written out only when shown: a policy can have tens of thousands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    #[serde(serialize_with = "as_text")]
    pub entry: Entry,
    /// Shown as `file:line:column`.
    #[serde(serialize_with = "as_text")]
    pub origin: Origin,
    /// What this entry contributed (for a name: its resolved addresses).
    pub addresses: Vec<IpNet>,
    /// The host name whose answer these addresses are; `None` for literal addresses and blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameRule {
    pub verdict: Verdict,
    /// `example.com` or `*.example.com`.
    pub pattern: String,
    pub protocol: Protocol,
    #[serde(serialize_with = "ports_as_text")]
    pub ports: Ports,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub name: String,
    #[serde(flatten)]
    pub result: ResolvedResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedResult {
    Answer(Answer),
    Failure(Failure),
}

impl NameRule {
    /// Whether the rule's pattern covers `name`, by the one rule of
    /// [`crate::policy::name::pattern_matches`] (what sbx's DNS service applies to questions).
    pub fn matches(&self, name: &HostName) -> bool {
        crate::policy::name::pattern_matches(&self.pattern, name)
    }
}

impl Plan {
    /// The allow rule sets with the literal addresses and blocks only. In allowlist mode the
    /// addresses of names are admitted like DNS answers, for their TTL plus the grace period
    /// (see [`Plan::name_answers`]): they follow the answers rather than stay for the run.
    /// The sets come without their `sources`: what a backend enforces, not where it came from.
    pub fn literal_allow(&self) -> Vec<RuleSet> {
        self.allow
            .iter()
            .filter(|set| set.has_literal_addresses())
            .map(|set| {
                // Without names the set's addresses are its literal ones, already aggregated.
                let addresses = if set.sources.iter().all(|s| s.name.is_none()) {
                    set.addresses.clone()
                } else {
                    let literal: Vec<IpNet> = set
                        .sources
                        .iter()
                        .filter(|s| s.name.is_none())
                        .flat_map(|s| s.addresses.iter().copied())
                        .collect();
                    IpNet::aggregate(&literal)
                };
                RuleSet {
                    protocol: set.protocol,
                    ports: set.ports.clone(),
                    addresses,
                    sources: Vec::new(),
                }
            })
            .collect()
    }

    /// What sbx resolved at start for the allowed names: `(name, addresses, ttl)`, with the
    /// answer's smallest TTL.
    pub fn name_answers(&self) -> Vec<(String, Vec<IpAddr>, u32)> {
        let mut names: Vec<&str> = self
            .allow
            .iter()
            .flat_map(|set| set.sources.iter().filter_map(|s| s.name.as_deref()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let resolved = self.resolved.iter().find(|r| r.name == name)?;
                let ResolvedResult::Answer(answer) = &resolved.result else {
                    return None;
                };
                let addrs = answer.addresses.iter().map(|a| a.ip).collect();
                let ttl = answer.addresses.iter().map(|a| a.ttl).min().unwrap_or(0);
                Some((name.to_string(), addrs, ttl))
            })
            .collect()
    }

    /// The distinct (protocol, ports) of the allowed name rules: the groups whose addresses
    /// sbx's DNS service admits as it answers. Sorted, so group numbers are stable.
    pub fn name_groups(&self) -> Vec<(Protocol, Ports)> {
        let mut groups: Vec<(Protocol, Ports)> = self
            .names
            .iter()
            .filter(|r| r.verdict == Verdict::Allow)
            .map(|r| (r.protocol, r.ports.clone()))
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }
}

/// What loading a policy file up to its Plan gave.
pub struct Loaded {
    /// The plan, and the resolver that resolved it (the DNS service asks the same servers);
    /// `None` when something failed.
    pub built: Option<(Plan, Arc<Resolver>)>,
    /// Every problem found on the way, errors and warnings (the plan's `warnings` hold the
    /// warnings too, one line each).
    pub diagnostics: Vec<Diagnostic>,
    /// Why no resolver could be set up for the policy's `dns` settings, if none could.
    pub setup_error: Option<String>,
    /// The sources, to show the diagnostics with.
    pub loader: Loader,
    /// The composed policy: large ones take a while to free, which a caller can do elsewhere.
    pub policy: Option<Policy>,
}

/// A policy file to its Plan: loaded, composed and checked (`policy`), its names resolved with
/// its own `dns` settings, its rules normalised.
pub fn load(path: &std::path::Path) -> std::io::Result<Loaded> {
    let mut loader = Loader::new();
    let policy = loader.load(path);
    let mut diagnostics: Vec<Diagnostic> = loader.diagnostics().to_vec();
    let mut loaded = Loaded {
        built: None,
        diagnostics: Vec::new(),
        setup_error: None,
        loader,
        policy: None,
    };
    let Some(policy) = policy else {
        loaded.diagnostics = diagnostics;
        return Ok(loaded);
    };
    let resolver = match Resolver::new(&policy.dns) {
        Ok(resolver) => Arc::new(resolver),
        Err(crate::resolve::SetupError(why)) => {
            loaded.setup_error = Some(why);
            loaded.diagnostics = diagnostics;
            return Ok(loaded);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (built, problems) = runtime.block_on(build(&policy, resolver.clone()));
    diagnostics.extend(problems);
    loaded.built = built.map(|mut plan| {
        plan.warnings = diagnostics
            .iter()
            .filter(|d| !d.is_error())
            .map(|d| crate::diag::one_line(&loaded.loader.sources, d))
            .collect();
        (plan, resolver)
    });
    loaded.diagnostics = diagnostics;
    loaded.policy = Some(policy);
    Ok(loaded)
}

/// Builds the plan. Problems (unresolvable names) become diagnostics located at the entries
/// that named them: errors, or warnings under `on_resolve_failure: warn`. Returns `None` when
/// there is an error.
pub async fn build(policy: &Policy, resolver: Arc<Resolver>) -> (Option<Plan>, Vec<Diagnostic>) {
    let answers = resolver.resolve_all(policy.host_names()).await;
    let mut diagnostics = Vec::new();
    resolution_problems(policy, &answers, &mut diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return (None, diagnostics);
    }
    let plan = Plan {
        name: policy.name.clone(),
        description: policy.description.clone(),
        mode: policy.mode.value,
        files: policy.files.iter().map(|f| f.to_string()).collect(),
        dns_servers: resolver.servers().iter().map(|s| s.to_string()).collect(),
        dns_grace: policy.dns.grace,
        allow: rule_sets(&policy.allow, &answers, &[]),
        deny: rule_sets(&policy.deny, &answers, &allowed_names(policy)),
        names: name_rules(policy),
        resolved: answers
            .into_iter()
            .map(|(name, result)| Resolved {
                name,
                result: match result {
                    Ok(answer) => ResolvedResult::Answer(answer),
                    Err(failure) => ResolvedResult::Failure(failure),
                },
            })
            .collect(),
        warnings: Vec::new(),
    };
    (Some(plan), diagnostics)
}

/// An allow name that does not resolve fails the plan (fail closed) unless the policy says
/// `on_resolve_failure: warn`. A deny name that does not resolve has no address to deny now;
/// that is not a problem (the base policy denies `metadata.google.internal`, which exists only
/// on GCP), and the plan lists it among the failures.
fn resolution_problems(
    policy: &Policy,
    answers: &BTreeMap<String, Result<Answer, Failure>>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut reported = BTreeSet::new();
    for rule in &policy.allow {
        let Target::Host(name) = &rule.entry.target else {
            continue;
        };
        let Some(Err(failure)) = answers.get(name) else {
            continue;
        };
        if !reported.insert(name) {
            continue;
        }
        let message = format!("cannot resolve `{name}`: {failure}");
        let d = match policy.dns.on_resolve_failure {
            OnResolveFailure::Error => Diagnostic::error("resolve-failed", message).help(
                "fix the name or the DNS servers, or set `dns.on_resolve_failure: warn` to \
                 start anyway (the name can still become reachable through sbx's DNS service)",
            ),
            OnResolveFailure::Warn => Diagnostic::warning("resolve-failed", message),
        };
        let d = d
            .at(rule.origin.file, rule.origin.span)
            .label(format!("{}", rule.entry))
            .note(format!(
                "asked {} with timeout {:?} and {} attempt(s)",
                server_list(policy),
                policy.dns.timeout,
                policy.dns.attempts
            ));
        diagnostics.push(d);
    }
}

fn server_list(policy: &Policy) -> String {
    policy
        .dns
        .servers
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The host names of the allow entries, sorted.
fn allowed_names(policy: &Policy) -> Vec<&str> {
    let mut names: Vec<&str> = policy
        .allow
        .iter()
        .filter_map(|rule| match &rule.entry.target {
            Target::Host(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The rule sets of `rules`. A wildcard among them contributes the addresses of the `covered`
/// names below it (for `deny`: the allowed names, so that deny wins for names as for addresses:
/// the DNS service refuses such a name, and the addresses sbx resolved for it at start, which
/// its allow entry would otherwise admit, are denied on the wildcard's ports and protocol, as an
/// exact deny name's are).
fn rule_sets(
    rules: &[Rule],
    answers: &BTreeMap<String, Result<Answer, Failure>>,
    covered: &[&str],
) -> Vec<RuleSet> {
    // One set per protocol and ports, found by hash: a policy can have thousands of entries
    // and as many distinct port lists.
    let mut index: HashMap<(Protocol, &Ports), usize, foldhash::fast::RandomState> =
        HashMap::default();
    // Counted first, so that each set's sources are allocated once (10,000 of them, copied
    // over and over as a Vec grows, were a third of this stage).
    let mut counts: Vec<usize> = Vec::new();
    for rule in rules {
        let next = counts.len();
        let at = *index
            .entry((rule.entry.protocol, &rule.entry.ports))
            .or_insert(next);
        if at == next {
            counts.push(0);
        }
        counts[at] += 1;
    }
    let answered = |name: &str| match answers.get(name) {
        Some(Ok(answer)) => {
            IpNet::aggregate(&answer.addresses.iter().map(|a| host_net(a.ip)).collect())
        }
        _ => Vec::new(),
    };
    // A set appears once an entry contributes addresses to it (wildcards covering no resolved
    // name, and unresolved names, do not).
    let mut sets: Vec<Option<RuleSet>> = counts.iter().map(|_| None).collect();
    for rule in rules {
        // (addresses, the name they are the answer of)
        let contributed: Vec<(Vec<IpNet>, Option<String>)> = match &rule.entry.target {
            Target::Addr(ip) => vec![(vec![host_net(*ip)], None)],
            Target::Net(net) => vec![(vec![*net], None)],
            Target::Host(name) => vec![(answered(name), Some(name.clone()))],
            Target::Wildcard(suffix) => covered
                .iter()
                .filter(|name| crate::policy::name::is_strictly_below(name, suffix))
                .map(|name| (answered(name), Some(name.to_string())))
                .collect(),
        };
        for (addresses, name) in contributed {
            if addresses.is_empty() {
                continue;
            }
            let at = index[&(rule.entry.protocol, &rule.entry.ports)];
            let set = sets[at].get_or_insert_with(|| RuleSet {
                protocol: rule.entry.protocol,
                ports: rule.entry.ports.clone(),
                addresses: Vec::with_capacity(counts[at]),
                sources: Vec::with_capacity(counts[at]),
            });
            set.addresses.extend(&addresses);
            set.sources.push(Source {
                entry: rule.entry.clone(),
                origin: rule.origin.clone(),
                addresses,
                name,
            });
        }
    }
    let mut sets: Vec<RuleSet> = sets.into_iter().flatten().collect();
    sets.sort_by(|a, b| (a.protocol, &a.ports).cmp(&(b.protocol, &b.ports)));
    for set in &mut sets {
        set.addresses = IpNet::aggregate(&set.addresses);
    }
    sets
}

fn name_rules(policy: &Policy) -> Vec<NameRule> {
    let allow = policy.allow.iter().map(|r| (Verdict::Allow, r));
    let deny = policy.deny.iter().map(|r| (Verdict::Deny, r));
    let mut rules: Vec<NameRule> = allow
        .chain(deny)
        .filter_map(|(verdict, rule)| {
            let pattern = match &rule.entry.target {
                Target::Host(name) => name.clone(),
                Target::Wildcard(suffix) => format!("*.{suffix}"),
                _ => return None,
            };
            Some(NameRule {
                verdict,
                pattern,
                protocol: rule.entry.protocol,
                ports: rule.entry.ports.clone(),
                origin: rule.origin.to_string(),
            })
        })
        .collect();
    rules.sort_by(|a, b| {
        (a.verdict, &a.pattern, a.protocol, &a.ports)
            .cmp(&(b.verdict, &b.pattern, b.protocol, &b.ports))
    });
    rules
}

fn duration_as_text<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn as_text<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn ports_as_text<S: serde::Serializer>(ports: &Ports, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ports_text(ports))
}

/// `all`, or `80,443,8000-8100`.
pub fn ports_text(ports: &Ports) -> String {
    match ports {
        Ports::All => "all".into(),
        Ports::Only(ranges) => ranges
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The plan as a reviewer reads it before approving a policy change.
pub fn render_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "policy {} (mode: {})", plan.name, plan.mode.as_str());
    if let Some(description) = &plan.description {
        let _ = writeln!(w, "  {description}");
    }
    let _ = writeln!(w, "  files: {}", plan.files.join(", "));
    let _ = writeln!(w, "  resolved with: {}", plan.dns_servers.join(", "));

    let verdict = match plan.mode {
        Mode::None => "nothing but the command's own loopback; `deny` is kept for the record",
        Mode::Allowlist => {
            "a connection is admitted when an allow set holds it and no deny set does"
        }
        Mode::Open => "everything is admitted except what a deny set holds",
    };
    let _ = writeln!(w, "\n{verdict}");
    if plan.mode == Mode::Allowlist {
        render_sets(w, "allow", &plan.allow);
    }
    render_sets(w, "deny", &plan.deny);

    if !plan.names.is_empty() {
        let _ = writeln!(w, "\nnames decided by sbx's DNS service");
        let width = plan
            .names
            .iter()
            .map(|n| n.pattern.len())
            .max()
            .unwrap_or(0);
        for n in &plan.names {
            let verdict = match n.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny ",
            };
            let _ = writeln!(
                w,
                "  {verdict} {:width$}  {}/{}  {}",
                n.pattern,
                n.protocol.as_str(),
                ports_text(&n.ports),
                n.origin
            );
        }
    }

    if !plan.resolved.is_empty() {
        let _ = writeln!(w, "\nresolved by sbx");
        for r in &plan.resolved {
            match &r.result {
                ResolvedResult::Answer(answer) => {
                    let chain: String = answer.cnames.iter().map(|c| format!(" → {c}")).collect();
                    let addresses: Vec<String> = answer
                        .addresses
                        .iter()
                        .map(|a| format!("{} (ttl {})", a.ip, a.ttl))
                        .collect();
                    let _ = writeln!(w, "  {}{chain}: {}", r.name, addresses.join(", "));
                }
                ResolvedResult::Failure(failure) => {
                    let _ = writeln!(w, "  {}: {failure}", r.name);
                }
            }
        }
    }

    if !plan.warnings.is_empty() {
        let _ = writeln!(w, "\nwarnings");
        for warning in &plan.warnings {
            let _ = writeln!(w, "  {warning}");
        }
    }
    out
}

fn render_sets(w: &mut String, title: &str, sets: &[RuleSet]) {
    use std::fmt::Write;
    let _ = writeln!(w, "\n{title}");
    if sets.is_empty() {
        let _ = writeln!(w, "  (nothing)");
        return;
    }
    for set in sets {
        let addresses: Vec<String> = set.addresses.iter().map(net_text).collect();
        let _ = writeln!(
            w,
            "  {}/{}  {}",
            set.protocol.as_str(),
            ports_text(&set.ports),
            addresses.join(", ")
        );
        // A wildcard's addresses are those of the names below it that sbx resolved.
        let entries: Vec<String> = set
            .sources
            .iter()
            .map(|s| match (&s.entry.target, &s.name) {
                (Target::Wildcard(_), Some(name)) => format!("{} ({name})", s.entry),
                _ => s.entry.to_string(),
            })
            .collect();
        let width = entries.iter().map(String::len).max().unwrap_or(0);
        for (entry, source) in entries.iter().zip(&set.sources) {
            let _ = writeln!(w, "      {entry:width$}  {}", source.origin);
        }
    }
}

/// A single address without its `/32` or `/128`.
fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}
