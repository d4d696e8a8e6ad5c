//! Kubernetes NetworkPolicy (networking.k8s.io/v1): allow rules of blocks and ports only. It has
//! no names, no DNS filtering and no deny rules: names need `--resolve`, and a deny is written as
//! an `except` of the allowed blocks that hold it.

use ipnet::IpNet;

use super::yaml::{self, Node, map, str};
use super::{
    Options, Out, PortSpan, at_rule, cidr_text, deny_name, port_spans, refuse_loopback,
    resolved_nets, target_nets, without_dns_port,
};
use crate::diag::Diagnostic;
use crate::policy::{Mode, Policy, Rule, Target};

const ENGINE: &str = "a Kubernetes NetworkPolicy";

pub(super) fn export(policy: &Policy, options: &Options, name: &str, out: &mut Out<'_>) -> String {
    let denied = denied_blocks(policy, out);
    let egress = match policy.mode.value {
        Mode::None => Vec::new(),
        Mode::Open => open_egress(&denied),
        Mode::Allowlist => {
            let mut egress = Vec::new();
            let mut resolved_names = false;
            for rule in &policy.allow {
                resolved_names |= allow_rule(rule, &denied, out, &mut egress);
            }
            if resolved_names {
                out.warn(Diagnostic::warning(
                    "no-dns",
                    "a NetworkPolicy cannot filter DNS, so none is allowed: the pods reach the resolved addresses, but cannot look the names up (allow the cluster DNS yourself if DNS may carry any name)",
                ));
            }
            egress
        }
    };
    let mut metadata = vec![("name", str(name))];
    if let Some(ns) = &options.namespace {
        metadata.push(("namespace", str(ns.clone())));
    }
    let selector = if options.selector.is_empty() {
        map::<String>([])
    } else {
        map([(
            "matchLabels",
            map(options
                .selector
                .iter()
                .map(|(k, v)| (k.clone(), str(v.clone())))),
        )])
    };
    yaml::render(&map([
        ("apiVersion", str("networking.k8s.io/v1")),
        ("kind", str("NetworkPolicy")),
        ("metadata", map(metadata)),
        (
            "spec",
            map([
                ("podSelector", selector),
                ("policyTypes", Node::Seq(vec![str("Egress")])),
                ("egress", Node::Seq(egress)),
            ]),
        ),
    ]))
}

/// The deny entries as blocks (every port and protocol), each with its rule. A deny of some
/// ports only cannot be an `except`, which holds whole blocks; it is refused where it would
/// matter (in mode open, or inside an allowed block).
fn denied_blocks<'p>(policy: &'p Policy, out: &mut Out<'_>) -> Vec<(IpNet, &'p Rule)> {
    let mut blocks = Vec::new();
    if policy.mode.value == Mode::None {
        return blocks;
    }
    for rule in &policy.deny {
        let nets = match deny_name(policy, rule, "Kubernetes", false, out) {
            Some(nets) => nets,
            None => target_nets(&rule.entry.target).into_iter().collect(),
        };
        if nets.is_empty() {
            continue;
        }
        if port_spans(&rule.entry).is_some() {
            let matters = policy.mode.value == Mode::Open
                || policy.allow.iter().any(|a| {
                    target_nets(&a.entry.target)
                        .is_some_and(|allowed| nets.iter().any(|d| overlap(d, &allowed)))
                });
            if matters {
                out.error(
                    at_rule(
                        Diagnostic::error(
                            "deny-ports",
                            "a NetworkPolicy has no deny rules: a denial is written as an `except` of an allowed block, which cannot hold ports",
                        ),
                        rule,
                    )
                    .help("deny the whole address (every port), or use --format cilium (egressDeny with toPorts)"),
                );
            }
            continue;
        }
        blocks.extend(nets.into_iter().map(|n| (n, rule)));
    }
    blocks
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn open_egress(denied: &[(IpNet, &Rule)]) -> Vec<Node> {
    if denied.is_empty() {
        return vec![
            Node::Comment("mode open: every destination".into()),
            map::<String>([]),
        ];
    }
    let mut peers = Vec::new();
    for world in ["0.0.0.0/0", "::/0"] {
        let world: IpNet = world.parse().expect("a block");
        if denied.iter().any(|(d, _)| d.contains(&world)) {
            continue;
        }
        peers.push(ip_block(&world, denied));
    }
    vec![
        Node::Comment("mode open: everything but the deny entries".into()),
        map([("to", Node::Seq(peers))]),
    ]
}

fn ip_block(net: &IpNet, denied: &[(IpNet, &Rule)]) -> Node {
    let mut except: Vec<&IpNet> = denied
        .iter()
        .map(|(d, _)| d)
        .filter(|d| net.contains(*d) && *d != net)
        .collect();
    except.sort();
    except.dedup();
    let mut block = vec![("cidr", str(cidr_text(net)))];
    if !except.is_empty() {
        block.push((
            "except",
            Node::Seq(except.into_iter().map(|d| str(cidr_text(d))).collect()),
        ));
    }
    map([("ipBlock", map(block))])
}

/// Whether the entry was a name written as its resolved addresses.
fn allow_rule(
    rule: &Rule,
    denied: &[(IpNet, &Rule)],
    out: &mut Out<'_>,
    egress: &mut Vec<Node>,
) -> bool {
    if refuse_loopback(rule, "Kubernetes", out) {
        return false;
    }
    let (nets, resolved) = match &rule.entry.target {
        Target::Wildcard(suffix) => {
            out.error(
                at_rule(
                    Diagnostic::error(
                        "wildcard-entry",
                        format!("{ENGINE} cannot follow DNS answers, and `*.{suffix}` has no addresses to write"),
                    ),
                    rule,
                )
                .help("use --format cilium (toFQDNs), or list the names and export with --resolve"),
            );
            return false;
        }
        Target::Host(name) => match resolved_nets(rule, true, out) {
            Some(nets) => (nets, true),
            None => {
                out.error(
                    at_rule(
                        Diagnostic::error(
                            "name-entry",
                            format!("{ENGINE} has no host names, and `{name}` is one"),
                        ),
                        rule,
                    )
                    .help("export with --resolve to write the addresses it has now (they go stale), or use --format cilium (toFQDNs)"),
                );
                return false;
            }
        },
        target => (target_nets(target).into_iter().collect(), false),
    };
    let spans = match port_spans(&rule.entry) {
        Some(spans) => without_dns_port(&spans),
        None => {
            out.warn(at_rule(
                Diagnostic::warning(
                    "other-protocols",
                    "sbx sends DNS to its own gate, never to this destination, and a NetworkPolicy cannot allow every protocol but port 53: exported as every TCP and UDP port but 53, without ICMP and other protocols (narrower than sbx)",
                ),
                rule,
            ));
            without_dns_port(&[
                PortSpan {
                    proto: super::L4Proto::Tcp,
                    first: 1,
                    last: 65535,
                },
                PortSpan {
                    proto: super::L4Proto::Udp,
                    first: 1,
                    last: 65535,
                },
            ])
        }
    };
    egress.push(Node::Comment(format!(
        "{} {}",
        rule.origin,
        rule.entry.to_yaml()
    )));
    if spans.is_empty() {
        egress.push(Node::Comment(
            "only port 53, which sbx's DNS gate takes: nothing to allow".into(),
        ));
        return resolved;
    }
    let mut peers = Vec::new();
    for net in &nets {
        if let Some((_, deny)) = denied.iter().find(|(d, _)| d.contains(net)) {
            egress.push(Node::Comment(format!(
                "{} is denied by {}",
                cidr_text(net),
                deny.origin
            )));
            continue;
        }
        peers.push(ip_block(net, denied));
    }
    if peers.is_empty() {
        return resolved;
    }
    let ports = spans.iter().map(|s| {
        let mut port = vec![("protocol", str(s.proto.upper()))];
        if (s.first, s.last) != (1, 65535) {
            port.push(("port", Node::Int(i64::from(s.first))));
            if s.last != s.first {
                port.push(("endPort", Node::Int(i64::from(s.last))));
            }
        }
        map(port)
    });
    egress.push(map([
        ("to", Node::Seq(peers)),
        ("ports", Node::Seq(ports.collect())),
    ]));
    resolved
}
