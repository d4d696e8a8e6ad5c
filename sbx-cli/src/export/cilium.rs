//! CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2).

use ipnet::IpNet;

use super::yaml::{self, Node, map, str};
use super::{
    L4Proto, Options, Out, PortSpan, at_rule, cidr_text, deny_name, port_spans, refuse_loopback,
    target_nets, without_dns_port,
};
use crate::diag::Diagnostic;
use crate::policy::{Mode, Policy, Rule, Target};

const ENGINE: &str = "Cilium";

/// Cilium takes at most this many ports in one `toPorts` item.
const PORTS_PER_RULE: usize = 40;

/// The labels of the cluster DNS pods in kube-system, which kube-dns and CoreDNS deployments
/// both carry.
const KUBE_DNS: [(&str, &str); 2] = [
    ("k8s:io.kubernetes.pod.namespace", "kube-system"),
    ("k8s:k8s-app", "kube-dns"),
];

pub(super) fn export(policy: &Policy, options: &Options, name: &str, out: &mut Out<'_>) -> String {
    let mut egress = Vec::new();
    let mut egress_deny = Vec::new();
    match policy.mode.value {
        Mode::None => {
            egress_deny.push(Node::Comment(
                "mode none: every destination; the deny entries are inside it".into(),
            ));
            egress_deny.push(map([("toEntities", Node::Seq(vec![str("all")]))]));
        }
        Mode::Open => {
            egress.push(Node::Comment(
                "mode open: everything but the egressDeny rules".into(),
            ));
            egress.push(map([("toEntities", Node::Seq(vec![str("all")]))]));
            deny_rules(policy, out, &mut egress_deny);
        }
        Mode::Allowlist => {
            let mut dns_names = Vec::new();
            for rule in &policy.allow {
                allow_rule(
                    rule,
                    options,
                    out,
                    &mut egress,
                    &mut egress_deny,
                    &mut dns_names,
                );
            }
            if !dns_names.is_empty() {
                egress.push(Node::Comment(
                    "DNS through Cilium's proxy, answered for the allowed names only (sbx's DNS gate)"
                        .into(),
                ));
                egress.push(dns_rule(dns_names));
            }
            deny_rules(policy, out, &mut egress_deny);
        }
    }
    let kind = if options.clusterwide {
        "CiliumClusterwideNetworkPolicy"
    } else {
        "CiliumNetworkPolicy"
    };
    let mut metadata = vec![("name", str(name))];
    if let Some(ns) = &options.namespace {
        metadata.push(("namespace", str(ns.clone())));
    }
    let selector = map(options
        .selector
        .iter()
        .map(|(k, v)| (k.clone(), str(v.clone()))));
    let selector = if options.selector.is_empty() {
        map::<String>([])
    } else {
        map([("matchLabels", selector)])
    };
    let mut spec = Vec::new();
    if let Some(description) = &policy.description {
        spec.push(("description", str(description.clone())));
    }
    spec.push(("endpointSelector", selector));
    if !egress.is_empty() {
        spec.push(("egress", Node::Seq(egress)));
    }
    if !egress_deny.is_empty() {
        spec.push(("egressDeny", Node::Seq(egress_deny)));
    }
    yaml::render(&map([
        ("apiVersion", str("cilium.io/v2")),
        ("kind", str(kind)),
        ("metadata", map(metadata)),
        ("spec", map(spec)),
    ]))
}

fn allow_rule(
    rule: &Rule,
    options: &Options,
    out: &mut Out<'_>,
    egress: &mut Vec<Node>,
    egress_deny: &mut Vec<Node>,
    dns_names: &mut Vec<Node>,
) {
    if refuse_loopback(rule, ENGINE, out) {
        return;
    }
    let spans = port_spans(&rule.entry);
    egress.push(Node::Comment(format!(
        "{} {}",
        rule.origin,
        rule.entry.to_yaml()
    )));
    match &rule.entry.target {
        Target::Host(_) | Target::Wildcard(_) => {
            let selectors = fqdn_selectors(rule, options, out);
            dns_names.extend(selectors.iter().cloned());
            let spans = match spans {
                Some(spans) => without_dns_port(&spans),
                None => {
                    out.warn(at_rule(
                        Diagnostic::warning(
                            "name-other-protocols",
                            "Cilium cannot keep port 53 of a name for sbx's DNS gate and allow every other protocol: this entry is exported as every TCP and UDP port but 53, without ICMP and other protocols (narrower than sbx)",
                        ),
                        rule,
                    ));
                    without_dns_port(&every_port())
                }
            };
            push_with_ports(egress, ("toFQDNs", Node::Seq(selectors)), &spans);
        }
        Target::Addr(_) | Target::Net(_) => {
            let cidr = cidr_set(
                &target_nets(&rule.entry.target)
                    .into_iter()
                    .collect::<Vec<_>>(),
            );
            match spans {
                Some(spans) => {
                    push_with_ports(egress, ("toCIDRSet", cidr), &without_dns_port(&spans))
                }
                None => {
                    // Every protocol, but DNS goes to sbx's gate, never to this destination.
                    egress.push(map([("toCIDRSet", cidr.clone())]));
                    egress_deny.push(Node::Comment(format!(
                        "{}: port 53 goes to the DNS rule, as sbx sends all DNS to its gate",
                        rule.origin
                    )));
                    egress_deny.push(map([
                        ("toCIDRSet", cidr),
                        ("toPorts", to_ports(&dns_port())),
                    ]));
                }
            }
        }
    }
}

fn every_port() -> Vec<PortSpan> {
    [L4Proto::Tcp, L4Proto::Udp]
        .map(|proto| PortSpan {
            proto,
            first: 1,
            last: 65535,
        })
        .to_vec()
}

fn dns_port() -> Vec<PortSpan> {
    [L4Proto::Udp, L4Proto::Tcp]
        .map(|proto| PortSpan {
            proto,
            first: 53,
            last: 53,
        })
        .to_vec()
}

/// An egress item with `to` and its ports; nothing when no port is left (an entry for port 53
/// only, which sbx's gate takes).
fn push_with_ports(egress: &mut Vec<Node>, to: (&str, Node), spans: &[PortSpan]) {
    if spans.is_empty() {
        egress.push(Node::Comment(
            "only port 53, which sbx's DNS gate takes: nothing to allow".into(),
        ));
        return;
    }
    egress.push(map([to, ("toPorts", to_ports(spans))]));
}

fn to_ports(spans: &[PortSpan]) -> Node {
    Node::Seq(
        spans
            .chunks(PORTS_PER_RULE)
            .map(|chunk| map([("ports", ports_list(chunk))]))
            .collect(),
    )
}

fn ports_list(spans: &[PortSpan]) -> Node {
    Node::Seq(
        spans
            .iter()
            .map(|s| {
                let mut port = vec![("port", str(s.first.to_string()))];
                if s.last != s.first {
                    port.push(("endPort", Node::Int(i64::from(s.last))));
                }
                port.push(("protocol", str(s.proto.upper())));
                map(port)
            })
            .collect(),
    )
}

fn cidr_set(nets: &[IpNet]) -> Node {
    Node::Seq(
        nets.iter()
            .map(|n| map([("cidr", str(cidr_text(n)))]))
            .collect(),
    )
}

/// `matchName` for a name; for a wildcard, `**.suffix`, which Cilium 1.19 and later read as
/// sbx does (any depth below, not the suffix itself), or with `--wildcard-depth N` one
/// `*.`-pattern per depth, for older releases, which read `**` as `*` (one label).
fn fqdn_selectors(rule: &Rule, options: &Options, out: &mut Out<'_>) -> Vec<Node> {
    match &rule.entry.target {
        Target::Host(name) => vec![map([("matchName", str(name.clone()))])],
        Target::Wildcard(suffix) => match options.wildcard_depth {
            None => vec![map([("matchPattern", str(format!("**.{suffix}")))])],
            Some(depth) => {
                out.warn(at_rule(
                    Diagnostic::warning(
                        "wildcard-depth",
                        format!("`*.{suffix}` is exported as names 1 to {depth} labels below `{suffix}` (--wildcard-depth): deeper names are refused, unlike in sbx"),
                    ),
                    rule,
                ));
                (1..=depth)
                    .map(|d| {
                        map([(
                            "matchPattern",
                            str(format!("{}{suffix}", "*.".repeat(usize::from(d)))),
                        )])
                    })
                    .collect()
            }
        },
        Target::Addr(_) | Target::Net(_) => unreachable!("only names have FQDN selectors"),
    }
}

fn dns_rule(mut names: Vec<Node>) -> Node {
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(format!("{n:?}")));
    let labels = map(KUBE_DNS.map(|(k, v)| (k, str(v))));
    map([
        (
            "toEndpoints",
            Node::Seq(vec![map([("matchLabels", labels)])]),
        ),
        (
            "toPorts",
            Node::Seq(vec![map([
                ("ports", ports_list(&dns_port())),
                ("rules", map([("dns", Node::Seq(names))])),
            ])]),
        ),
    ])
}

fn deny_rules(policy: &Policy, out: &mut Out<'_>, egress_deny: &mut Vec<Node>) {
    for rule in &policy.deny {
        let nets = match deny_name(policy, rule, ENGINE, true, out) {
            Some(nets) => nets,
            None => target_nets(&rule.entry.target).into_iter().collect(),
        };
        if nets.is_empty() {
            continue;
        }
        egress_deny.push(Node::Comment(format!(
            "{} {}",
            rule.origin,
            rule.entry.to_yaml()
        )));
        let mut item = vec![("toCIDRSet", cidr_set(&nets))];
        if let Some(spans) = port_spans(&rule.entry) {
            item.push(("toPorts", to_ports(&spans)));
        }
        egress_deny.push(map(item));
    }
}
