//! The Export stage: a composed policy written for another enforcement engine (Cilium, Kubernetes
//! NetworkPolicy, systemd), with the same meaning or a precise refusal. docs/export.md says what
//! maps to what and why.
//!
//! It reads the composed [`Policy`] (after `extends`), never the Plan: names stay names, so that
//! an engine that resolves them itself (Cilium's DNS proxy) keeps following their answers. Only
//! with `--resolve` are names replaced by the addresses they have now, which the caller passes in.
//!
//! What an engine cannot say exactly is an error naming the entry, or, where the export is
//! narrower than sbx (never wider), a warning that says so; both are also written as comments
//! into the output, so that a reviewer of the generated file sees them.

mod cilium;
mod kubernetes;
mod systemd;
mod yaml;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::diag::{Diagnostic, Location};
use crate::policy::name::is_strictly_below;
use crate::policy::{Entry, Ports, Protocol, Rule, Target};
use crate::policy::{Mode, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// CiliumNetworkPolicy (cilium.io/v2), or CiliumClusterwideNetworkPolicy with --clusterwide.
    Cilium,
    /// Kubernetes NetworkPolicy (networking.k8s.io/v1): addresses, blocks and ports only.
    Kubernetes,
    /// A systemd unit drop-in: IPAddressAllow= / IPAddressDeny=.
    Systemd,
}

/// How the exported object is named and placed, and what it may widen; `sbx export`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// The object's name (one policy only); by default the policy's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The namespace of the object (Kubernetes, Cilium); by default none is written.
    #[arg(long, value_name = "NS", conflicts_with = "clusterwide")]
    pub namespace: Option<String>,

    /// A label the selected pods carry (repeatable); without one, every pod of the namespace is
    /// selected.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,

    /// A CiliumClusterwideNetworkPolicy (needs --selector).
    #[arg(long)]
    pub clusterwide: bool,

    /// Cilium before 1.19: write each wildcard as one pattern per depth, 1 to N labels (deeper
    /// names are then refused).
    #[arg(long, value_name = "N")]
    pub wildcard_depth: Option<u8>,

    /// systemd: allow whole addresses where the policy allows only some ports (wider than the
    /// policy).
    #[arg(long)]
    pub widen_ports: bool,
}

/// `KEY=VALUE` of `--selector`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE (e.g. app=build)")),
    }
}

/// Each name of the policy and the addresses it has now (`--resolve`), or why it has none.
pub type Resolved = BTreeMap<String, Result<Vec<IpAddr>, String>>;

#[derive(Debug)]
pub struct Exported {
    pub text: String,
    pub warnings: Vec<Diagnostic>,
}

/// The names `--resolve` needs resolved for `policy`: every host name of `allow` and `deny`.
pub fn names_to_resolve(policy: &Policy) -> Vec<String> {
    policy.host_names().into_iter().collect()
}

/// `policy` in `format`. On failure, every error (and the warnings found so far).
pub fn export(
    policy: &Policy,
    format: Format,
    options: &Options,
    resolved: Option<&Resolved>,
) -> Result<Exported, Vec<Diagnostic>> {
    let mut out = Out {
        diagnostics: Vec::new(),
        resolved,
    };
    check_options(format, options, &mut out);
    let name = object_name(policy, options, &mut out);
    let body = match format {
        Format::Cilium => cilium::export(policy, options, &name, &mut out),
        Format::Kubernetes => kubernetes::export(policy, options, &name, &mut out),
        Format::Systemd => systemd::export(policy, options, &mut out),
    };
    if out.diagnostics.iter().any(Diagnostic::is_error) {
        return Err(out.diagnostics);
    }
    let mut text = format!(
        "# sbx export --format {}: policy `{}` ({}), mode {}\n",
        format_name(format),
        policy.name,
        policy.files.join(", "),
        policy.mode.value.as_str()
    );
    let paths: BTreeMap<_, _> = policy
        .allow
        .iter()
        .chain(&policy.deny)
        .map(|r| (r.origin.file, &r.origin.path))
        .collect();
    for w in &out.diagnostics {
        let place = match (&w.location, &w.label) {
            (
                Some(Location {
                    file,
                    span: Some(span),
                }),
                Some(entry),
            ) => format!(
                "{}:{}:{}: {entry}: ",
                paths.get(file).map_or("?", |p| p.as_ref()),
                span.start.line,
                span.start.column
            ),
            _ => String::new(),
        };
        text.push_str(&format!("# warning[{}]: {place}{}\n", w.code, w.message));
    }
    text.push_str(&body);
    Ok(Exported {
        text,
        warnings: out.diagnostics,
    })
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Cilium => "cilium",
        Format::Kubernetes => "kubernetes",
        Format::Systemd => "systemd",
    }
}

/// What the exporters share: the problems found, and the answers of `--resolve`.
struct Out<'a> {
    diagnostics: Vec<Diagnostic>,
    resolved: Option<&'a Resolved>,
}

impl Out<'_> {
    fn error(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn warn(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }
}

/// An error or warning about one entry, pointing at where it was written.
fn at_rule(d: Diagnostic, rule: &Rule) -> Diagnostic {
    d.at(rule.origin.file, rule.origin.span)
        .label(rule.entry.to_yaml())
}

fn check_options(format: Format, options: &Options, out: &mut Out<'_>) {
    let flag_error = |flag: &str, only: &str| {
        Diagnostic::error(
            "export-option",
            format!("{flag} applies to --format {only} only"),
        )
    };
    if format != Format::Cilium && options.clusterwide {
        out.error(flag_error("--clusterwide", "cilium"));
    }
    if format != Format::Cilium && options.wildcard_depth.is_some() {
        out.error(flag_error("--wildcard-depth", "cilium"));
    }
    if format != Format::Systemd && options.widen_ports {
        out.error(flag_error("--widen-ports", "systemd"));
    }
    if format == Format::Systemd
        && (options.namespace.is_some() || !options.selector.is_empty() || options.name.is_some())
    {
        out.error(
            Diagnostic::error(
                "export-option",
                "--name, --namespace and --selector apply to Kubernetes objects, not to a systemd drop-in",
            )
            .help("install the drop-in as /etc/systemd/system/UNIT.d/sbx.conf for the unit it confines"),
        );
    }
    if options.clusterwide && options.selector.is_empty() {
        out.error(
            Diagnostic::error(
                "clusterwide-without-selector",
                "a clusterwide policy without --selector selects every pod of every namespace, kube-dns included",
            )
            .help("name the pods it confines: --selector app=build"),
        );
    }
    if options.wildcard_depth == Some(0) {
        out.error(Diagnostic::error(
            "export-option",
            "--wildcard-depth must be at least 1",
        ));
    }
}

/// A Kubernetes object name: an RFC 1123 subdomain (lower case letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, at most 253 characters).
fn object_name(policy: &Policy, options: &Options, out: &mut Out<'_>) -> String {
    let name = options.name.clone().unwrap_or_else(|| policy.name.clone());
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !valid {
        let from = if options.name.is_some() {
            "--name"
        } else {
            "the policy's name"
        };
        out.error(
            Diagnostic::error(
                "invalid-object-name",
                format!("`{name}` ({from}) is not a Kubernetes object name"),
            )
            .help("use lower-case letters, digits, `-` and `.`, e.g. --name ci-build"),
        );
    }
    name
}

/// One protocol with ports, as engines that filter by port write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    fn upper(self) -> &'static str {
        match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortSpan {
    proto: L4Proto,
    first: u16,
    last: u16,
}

/// What an entry admits at layer 4: every protocol and port, or these TCP/UDP port spans.
/// `protocol: any` with ports means TCP and UDP in sbx, so it becomes both, never an engine's
/// `ANY` (Cilium's takes SCTP too).
fn port_spans(entry: &Entry) -> Option<Vec<PortSpan>> {
    let protos: &[L4Proto] = match (&entry.ports, entry.protocol) {
        (Ports::All, Protocol::Any) => return None,
        (_, Protocol::Tcp) => &[L4Proto::Tcp],
        (_, Protocol::Udp) => &[L4Proto::Udp],
        (_, Protocol::Any) => &[L4Proto::Tcp, L4Proto::Udp],
    };
    let ranges: Vec<(u16, u16)> = match &entry.ports {
        Ports::All => vec![(1, 65535)],
        Ports::Only(ranges) => ranges.iter().map(|r| (r.first, r.last)).collect(),
    };
    Some(
        protos
            .iter()
            .flat_map(|&proto| {
                ranges
                    .iter()
                    .map(move |&(first, last)| PortSpan { proto, first, last })
            })
            .collect(),
    )
}

/// sbx's DNS gate takes every packet to port 53 (TCP or UDP, any address) in allowlist mode, so
/// an allow entry never lets DNS reach its own destination: the spans without port 53.
fn without_dns_port(spans: &[PortSpan]) -> Vec<PortSpan> {
    let mut kept = Vec::new();
    for &s in spans {
        if s.first <= 53 && 53 <= s.last {
            if s.first < 53 {
                kept.push(PortSpan { last: 52, ..s });
            }
            if s.last > 53 {
                kept.push(PortSpan { first: 54, ..s });
            }
        } else {
            kept.push(s);
        }
    }
    kept
}

fn is_loopback_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether the target is the host's loopback and nothing else: `localhost` and names below it
/// (which sbx resolves to 127.0.0.1 and ::1 itself), loopback addresses and blocks inside them.
fn names_loopback_only(target: &Target) -> bool {
    match target {
        Target::Host(name) => name == "localhost" || is_strictly_below(name, "localhost"),
        Target::Wildcard(suffix) => suffix == "localhost" || is_strictly_below(suffix, "localhost"),
        Target::Addr(ip) => is_loopback_addr(*ip),
        Target::Net(net) => is_loopback_addr(net.network()) && is_loopback_addr(net.broadcast()),
    }
}

/// Whether a block holds some of the host's loopback together with other addresses.
fn holds_loopback(target: &Target) -> bool {
    match target {
        Target::Net(net) => {
            !names_loopback_only(target)
                && (net.contains(&IpAddr::from([127, 0, 0, 1]))
                    || net.contains(&IpAddr::from(std::net::Ipv6Addr::LOCALHOST)))
        }
        _ => false,
    }
}

/// Whether sbx's DNS gate would answer some name `pattern` (a deny name or wildcard) covers
/// through an allow entry: then an engine whose DNS rules have no exceptions answers it too.
fn allowed_names_overlap<'p>(policy: &'p Policy, deny: &Target) -> Option<&'p Rule> {
    policy.allow.iter().find(|a| match (&a.entry.target, deny) {
        (Target::Host(n), Target::Host(d)) => n == d,
        (Target::Host(n), Target::Wildcard(d)) => is_strictly_below(n, d),
        (Target::Wildcard(s), Target::Host(d)) => is_strictly_below(d, s),
        (Target::Wildcard(s), Target::Wildcard(d)) => {
            s == d || is_strictly_below(s, d) || is_strictly_below(d, s)
        }
        _ => false,
    })
}

/// The addresses of a name under `--resolve`, as host blocks; `None` without `--resolve`. An
/// allow name without addresses is an error (as `sbx plan` fails closed); a deny name without
/// any has nothing to deny, as in sbx.
fn resolved_nets(rule: &Rule, allow: bool, out: &mut Out<'_>) -> Option<Vec<IpNet>> {
    let Target::Host(name) = &rule.entry.target else {
        return None;
    };
    let resolved = out.resolved?;
    match resolved.get(name) {
        Some(Ok(addrs)) => {
            out.warn(at_rule(
                Diagnostic::warning(
                    "resolved-addresses",
                    format!(
                        "`{name}` is written as the {} address(es) it has now; they go stale when its DNS changes",
                        addrs.len()
                    ),
                ),
                rule,
            ));
            Some(addrs.iter().map(|&ip| IpNet::from(ip)).collect())
        }
        Some(Err(why)) if allow => {
            out.error(at_rule(
                Diagnostic::error("resolve-failed", format!("`{name}` did not resolve: {why}")),
                rule,
            ));
            Some(Vec::new())
        }
        _ => Some(Vec::new()),
    }
}

/// What every format does with `deny` names and wildcards when the engine cannot match names
/// (all of them: Cilium has no `toFQDNs` in `egressDeny`). Returns the addresses to deny for
/// the entry (empty when there is nothing to write), or `None` when the entry is not a name.
fn deny_name(
    policy: &Policy,
    rule: &Rule,
    engine: &str,
    dns_filtered: bool,
    out: &mut Out<'_>,
) -> Option<Vec<IpNet>> {
    let target = &rule.entry.target;
    if !target.is_name() {
        return None;
    }
    let allowlist = policy.mode.value == Mode::Allowlist;
    if allowlist && let Some(allow) = allowed_names_overlap(policy, target) {
        out.error(
            at_rule(
                Diagnostic::error(
                    "deny-name-inside-allow",
                    format!(
                        "{engine} cannot keep `{}` out of the allowed name `{}`: it has no exceptions to a name rule",
                        rule.entry.to_yaml().trim_matches('"'),
                        allow.entry.to_yaml().trim_matches('"'),
                    ),
                ),
                rule,
            )
            .related(allow.origin.file, allow.origin.span, "allowed here")
            .help("list the allowed names one by one without the denied one, or use sbx to enforce this policy"),
        );
        return Some(Vec::new());
    }
    if let Target::Wildcard(_) = target {
        // `mode: open` refuses a deny wildcard (policy composition); in `none` nothing is
        // reachable anyway; in allowlist mode no allowed name falls under it, so neither sbx
        // nor the engine answers one.
        return Some(Vec::new());
    }
    if let Some(nets) = resolved_nets(rule, false, out) {
        return Some(nets);
    }
    let name = match target {
        Target::Host(name) => name,
        _ => unreachable!("wildcards were handled above"),
    };
    if allowlist {
        let dns = if dns_filtered {
            "its DNS lookups are refused, as by sbx's gate, but "
        } else {
            ""
        };
        out.warn(
            at_rule(
                Diagnostic::warning(
                    "deny-name-addresses",
                    format!("{engine} cannot deny `{name}` by name: {dns}the addresses it resolves to are not denied, so an allowed block or another allowed name's answer that holds them stays reachable"),
                ),
                rule,
            )
            .help("--resolve denies the addresses it has now"),
        );
    } else {
        out.error(
            at_rule(
                Diagnostic::error(
                    "deny-name",
                    format!("{engine} cannot deny `{name}` by name, and mode open does not filter DNS"),
                ),
                rule,
            )
            .help("deny its addresses or blocks instead, or export with --resolve to deny the addresses it has now"),
        );
    }
    Some(Vec::new())
}

/// Allow entries that name the host's loopback: a pod's (or a unit's) 127.0.0.1 is not the
/// machine sbx runs on, so their meaning cannot be kept there.
fn refuse_loopback(rule: &Rule, engine: &str, out: &mut Out<'_>) -> bool {
    if names_loopback_only(&rule.entry.target) {
        out.error(
            at_rule(
                Diagnostic::error(
                    "loopback-entry",
                    format!("this entry opens a service on the host's loopback; in {engine} a pod's loopback is its own (its containers, always reachable, never filtered) and the node's loopback cannot be reached"),
                ),
                rule,
            )
            .help("name the service by its Kubernetes address instead (a Service's name or block), in a policy written for the cluster"),
        );
        return true;
    }
    if holds_loopback(&rule.entry.target) {
        out.warn(at_rule(
            Diagnostic::warning(
                "loopback-in-block",
                format!("this block holds the host's loopback, which sbx lets the command reach; in {engine} a pod's loopback is its own and the node's is out of reach, so that part is not exported"),
            ),
            rule,
        ));
    }
    false
}

fn cidr_text(net: &IpNet) -> String {
    net.to_string()
}

fn target_nets(target: &Target) -> Option<IpNet> {
    match target {
        Target::Addr(ip) => Some(IpNet::from(*ip)),
        Target::Net(net) => Some(*net),
        Target::Host(_) | Target::Wildcard(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    use crate::policy::PortRange;

    fn entry(ports: Ports, protocol: Protocol) -> Entry {
        Entry {
            target: Target::Host("example.com".into()),
            ports,
            protocol,
        }
    }

    #[test]
    fn any_with_ports_is_tcp_and_udp_and_every_port_and_protocol_is_none() {
        let e = entry(
            Ports::Only(smallvec![PortRange {
                first: 80,
                last: 80
            }]),
            Protocol::Any,
        );
        let spans = port_spans(&e).unwrap();
        assert_eq!(
            spans.iter().map(|s| s.proto).collect::<Vec<_>>(),
            [L4Proto::Tcp, L4Proto::Udp]
        );
        assert_eq!(port_spans(&entry(Ports::All, Protocol::Any)), None);
    }

    #[test]
    fn port_53_is_cut_out_of_spans() {
        let spans = [
            PortSpan {
                proto: L4Proto::Udp,
                first: 1,
                last: 65535,
            },
            PortSpan {
                proto: L4Proto::Tcp,
                first: 53,
                last: 53,
            },
            PortSpan {
                proto: L4Proto::Tcp,
                first: 53,
                last: 60,
            },
        ];
        let cut = without_dns_port(&spans);
        let text: Vec<String> = cut
            .iter()
            .map(|s| format!("{}-{}", s.first, s.last))
            .collect();
        assert_eq!(text, ["1-52", "54-65535", "54-60"]);
    }

    #[test]
    fn loopback_targets() {
        assert!(names_loopback_only(&Target::Host("localhost".into())));
        assert!(names_loopback_only(&Target::Host("db.localhost".into())));
        assert!(names_loopback_only(&Target::Addr(
            "127.0.0.5".parse().unwrap()
        )));
        assert!(names_loopback_only(&Target::Addr("::1".parse().unwrap())));
        assert!(names_loopback_only(&Target::Net(
            "127.0.0.0/8".parse().unwrap()
        )));
        assert!(!names_loopback_only(&Target::Net(
            "0.0.0.0/0".parse().unwrap()
        )));
        assert!(holds_loopback(&Target::Net("0.0.0.0/0".parse().unwrap())));
        assert!(holds_loopback(&Target::Net("::/0".parse().unwrap())));
        assert!(!holds_loopback(&Target::Net("10.0.0.0/8".parse().unwrap())));
        assert!(!names_loopback_only(&Target::Host(
            "localhost.example.com".into()
        )));
    }
}
