//! The nftables ruleset of one sandbox: a table `inet sbx_N` in the host's namespace, where the
//! sandboxed command cannot reach it, applied in one transaction.
//!
//! ```text
//! forward:  from the sandbox link  → egress
//!           to the sandbox link    → replies only
//! input:    from the sandbox link  → replies, IPv6 neighbour discovery, sbx's DNS service
//!           (allowlist, or open with `Observe::dns`); the kernel's router solicitations and
//!           multicast listener reports dropped unlogged; else egress
//! egress:   replies → deny sets (refuse) → other DNS refused where sbx serves DNS →
//!           allowlist: allow sets (accept), the rest refused; open: accept; none (only built
//!           in audit): refused
//! refuse:   logged to the sandbox's NFLOG group (prefix `denied`); TCP reset, else ICMP
//!           administratively prohibited: the command fails at once. In audit
//!           (`Observe::audit`): logged (prefix `audit`) and accepted
//! allowed:  with `Observe::allowed`, what egress accepts comes here: the packet that opens a
//!           connection (its conntrack entry not yet confirmed) is logged (prefix `allowed`),
//!           then accepted
//! prerouting (nat, where sbx serves DNS): every DNS packet the sandbox sends goes to sbx's
//!           DNS service
//! postrouting (nat): the sandbox leaves as the host (masquerade)
//! ```
//!
//! Each rule set of the Plan (one protocol, one port set) becomes, per family, a hash set of its
//! single addresses and an interval set of its blocks, matched by one rule each, so matching
//! costs the same for 1 or 10,000 addresses. The hash set is sized to its addresses: the kernel
//! then picks its fixed-size hash, which takes 10,000 addresses in 3 ms (an interval set takes
//! each as a range of two ends, 10 ms).

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::expr::{
    BinaryOperation, CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
    Range, SetItem,
};
use nftables::schema::{
    Chain, Element, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{
    JumpTarget, Log, Match, NAT, NATFamily, Operator, Reject, RejectType, Statement,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

use super::net::Layout;
use crate::backend::Observe;
use crate::plan::{Plan, RuleSet};
use crate::policy::{Mode, Ports, Protocol};

pub const TABLE_PREFIX: &str = "sbx_";

/// The NFLOG prefixes that tell the sandbox's log messages apart (see `log`).
pub const LOG_DENIED: &str = "denied";
pub const LOG_AUDIT: &str = "audit";
pub const LOG_ALLOWED: &str = "allowed";

/// Whether sbx's DNS service serves the sandbox, every DNS packet it sends going there: always
/// in allowlist mode, and in open mode when asked.
pub fn serves_dns(plan: &Plan, observe: &Observe) -> bool {
    plan.mode == Mode::Allowlist || (plan.mode == Mode::Open && observe.dns)
}

fn dnat_to(addr: &str) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(string(addr)),
        family: Some(NATFamily::IP),
        port: None,
        flags: None,
    }))
}

/// The (protocol, ports) of allow entries that name the host's 127.0.0.1 (`127.0.0.1:5432`,
/// `localhost:5432`): reached from the sandbox by way of the host end of its link.
pub fn host_loopback_groups(plan: &Plan) -> Vec<(Protocol, Ports)> {
    let localhost: IpNet = "127.0.0.1/32".parse().expect("valid");
    let mut groups: Vec<(Protocol, Ports)> = plan
        .allow
        .iter()
        .filter(|set| set.addresses.iter().any(|n| n.contains(&localhost)))
        .map(|set| (set.protocol, set.ports.clone()))
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// The small table inside the sandbox's namespace, when the policy names host loopback
/// services: connections to 127.0.0.1 on their ports leave for the host end of the link (the
/// sandbox's own loopback keeps every other port). Routing only: what is allowed is decided on
/// the host side, like everything else.
pub fn inside(plan: &Plan, layout: &Layout) -> Option<Nftables<'static>> {
    let groups = host_loopback_groups(plan);
    if groups.is_empty() {
        return None;
    }
    let mut b = Builder::new("sbx_local".to_string());
    b.objects.push(add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: b.table.clone().into(),
        handle: None,
    })));
    b.chain("output", Some((NfChainType::NAT, NfHook::Output, -100)));
    b.chain(
        "postrouting",
        Some((NfChainType::NAT, NfHook::Postrouting, 100)),
    );
    for (protocol, ports) in groups {
        let mut statements = vec![
            matches(meta(MetaKey::Nfproto), Operator::EQ, string("ipv4")),
            matches(payload("ip", "daddr"), Operator::EQ, string("127.0.0.1")),
        ];
        statements.extend(protocol_and_ports(protocol, &ports));
        statements.push(dnat_to(&layout.host_v4.to_string()));
        b.rule("output", statements);
    }
    b.rule(
        "postrouting",
        vec![
            oifname(&layout.sandbox_if),
            matches(
                payload("ip", "saddr"),
                Operator::EQ,
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(string("127.0.0.0")),
                    len: 8,
                })),
            ),
            Statement::Masquerade(None),
        ],
    );
    Some(Nftables {
        objects: Cow::Owned(b.objects),
    })
}

/// The set holding the answered addresses of name-rule `group`, one family.
pub fn answered_set(group: usize, v6: bool) -> String {
    format!("dns{group}_v{}", if v6 { 6 } else { 4 })
}

pub fn table_name(slot: u32) -> String {
    format!("{TABLE_PREFIX}{slot}")
}

/// What one sandbox's table holds: its structure (table, chains, rules, empty sets), small and
/// of fixed size whatever the policy, and the addresses of each set.
pub struct Ruleset {
    table: String,
    objects: Vec<NfObject<'static>>,
    elements: Vec<SetElements>,
}

/// The addresses of one set: single addresses in a hash set (a constant-time insert), blocks
/// in an interval set (each an ordered insert of its two ends, several times the cost).
pub struct SetElements {
    pub set: String,
    pub nets: Vec<IpNet>,
    pub interval: bool,
}

impl Ruleset {
    pub fn build(plan: &Plan, observe: &Observe, layout: &Layout) -> Ruleset {
        Builder::new(table_name(layout.slot)).build(plan, observe, layout)
    }

    /// The structure, without set elements.
    pub fn structure(&self) -> Nftables<'static> {
        Nftables {
            objects: Cow::Owned(self.objects.clone()),
        }
    }

    /// Every set with addresses.
    pub fn elements(&self) -> &[SetElements] {
        &self.elements
    }

    /// The whole ruleset as one `nft -j` document, elements included (for `--dry-run`).
    pub fn to_json(&self) -> Nftables<'static> {
        let mut objects = self.objects.clone();
        for SetElements { set, nets, .. } in &self.elements {
            objects.push(add(NfListObject::Element(Element {
                family: NfFamily::INet,
                table: self.table.clone().into(),
                name: set.clone().into(),
                elem: Cow::Owned(nets.iter().map(net_element).collect()),
            })));
        }
        Nftables {
            objects: Cow::Owned(objects),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

/// The command that removes a sandbox's table (and with it every chain, set and rule in it).
pub fn delete_table(table: &str) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![NfObject::CmdObject(NfCmd::Delete(
            NfListObject::Table(Table {
                family: NfFamily::INet,
                name: table.to_string().into(),
                handle: None,
            }),
        ))]),
    }
}

struct Builder {
    table: String,
    objects: Vec<NfObject<'static>>,
    elements: Vec<SetElements>,
}

fn add(object: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(object))
}

fn string(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn anonymous_set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn iifname(name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Iifname), Operator::EQ, string(name))
}

fn oifname(name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Oifname), Operator::EQ, string(name))
}

fn established() -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        Operator::IN,
        anonymous_set(vec![string("established"), string("related")]),
    )
}

fn l4proto_in(protocols: &[&'static str]) -> Statement<'static> {
    let list = protocols.iter().map(|p| string(*p)).collect();
    matches(meta(MetaKey::L4proto), Operator::EQ, anonymous_set(list))
}

fn jump(target: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.to_string().into(),
    })
}

fn goto(target: &str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: target.to_string().into(),
    })
}

fn port_expression(ports: &Ports) -> Option<Expression<'static>> {
    let Ports::Only(ranges) = ports else {
        return None;
    };
    let items = ranges
        .iter()
        .map(|r| {
            if r.first == r.last {
                Expression::Number(r.first.into())
            } else {
                Expression::Range(Box::new(Range {
                    range: [
                        Expression::Number(r.first.into()),
                        Expression::Number(r.last.into()),
                    ],
                }))
            }
        })
        .collect();
    Some(anonymous_set(items))
}

fn net_element(net: &IpNet) -> Expression<'static> {
    if net.prefix_len() == net.max_prefix_len() {
        string(net.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(string(net.network().to_string())),
            len: net.prefix_len().into(),
        }))
    }
}

/// The statements that restrict a rule to one rule set's protocol and ports.
fn protocol_and_ports(protocol: Protocol, ports: &Ports) -> Vec<Statement<'static>> {
    let mut statements = Vec::new();
    let protocols: &[&'static str] = match protocol {
        Protocol::Tcp => &["tcp"],
        Protocol::Udp => &["udp"],
        Protocol::Any if *ports == Ports::All => &[],
        Protocol::Any => &["tcp", "udp"],
    };
    if !protocols.is_empty() {
        statements.push(l4proto_in(protocols));
    }
    if let Some(ports) = port_expression(ports) {
        statements.push(matches(payload("th", "dport"), Operator::EQ, ports));
    }
    statements
}

impl Builder {
    fn new(table: String) -> Builder {
        Builder {
            table,
            objects: Vec::new(),
            elements: Vec::new(),
        }
    }

    fn chain(&mut self, name: &str, hook: Option<(NfChainType, NfHook, i32)>) {
        let (kind, hook, prio) = match hook {
            Some((kind, hook, prio)) => (Some(kind), Some(hook), Some(prio)),
            None => (None, None, None),
        };
        self.objects.push(add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            name: name.to_string().into(),
            _type: kind,
            hook,
            prio,
            policy: hook.map(|_| NfChainPolicy::Accept),
            ..Chain::default()
        })));
    }

    fn rule(&mut self, chain: &str, statements: Vec<Statement<'static>>) {
        self.objects.push(add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            chain: chain.to_string().into(),
            expr: Cow::Owned(statements),
            ..Rule::default()
        })));
    }

    /// A set of addresses of one family (an interval set for blocks), with its elements.
    fn address_set(&mut self, name: &str, v6: bool, interval: bool, nets: Vec<IpNet>) {
        let set_type = if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        };
        self.objects.push(add(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            name: name.to_string().into(),
            handle: None,
            set_type: SetTypeValue::Single(set_type),
            policy: None,
            flags: interval.then(|| HashSet::from([SetFlag::Interval])),
            elem: None,
            timeout: None,
            gc_interval: None,
            size: (!interval).then_some(nets.len() as u32),
            comment: None,
        }))));
        self.elements.push(SetElements {
            set: name.to_string(),
            nets,
            interval,
        });
    }

    /// For each group of allowed name rules, a set per family of addresses sbx's DNS service
    /// answered, each expiring on its own (`dns{group}_v4`, `dns{group}_v6`), and a rule that
    /// accepts them with the group's protocol and ports.
    fn answered_sets(&mut self, plan: &Plan, accept: &dyn Fn() -> Statement<'static>) {
        for (group, (protocol, ports)) in plan.name_groups().iter().enumerate() {
            for (v6, field) in [(false, "ip"), (true, "ip6")] {
                let name = answered_set(group, v6);
                self.objects.push(add(NfListObject::Set(Box::new(Set {
                    family: NfFamily::INet,
                    table: self.table.clone().into(),
                    name: name.clone().into(),
                    handle: None,
                    set_type: SetTypeValue::Single(if v6 {
                        SetType::Ipv6Addr
                    } else {
                        SetType::Ipv4Addr
                    }),
                    policy: None,
                    flags: Some(HashSet::from([SetFlag::Timeout])),
                    elem: None,
                    timeout: None,
                    gc_interval: None,
                    size: None,
                    comment: None,
                }))));
                let mut statements = protocol_and_ports(*protocol, ports);
                statements.push(matches(
                    payload(field, "daddr"),
                    Operator::EQ,
                    string(format!("@{name}")),
                ));
                statements.push(accept());
                self.rule("egress", statements);
            }
        }
    }

    /// Sets and rules for the rule sets of one verdict; `verdict` is the statement a match ends
    /// with.
    fn rule_sets(
        &mut self,
        prefix: &str,
        sets: &[RuleSet],
        verdict: &dyn Fn() -> Statement<'static>,
    ) {
        for (i, set) in sets.iter().enumerate() {
            for (family, v6, field) in [("4", false, "ip"), ("6", true, "ip6")] {
                let (singles, blocks): (Vec<IpNet>, Vec<IpNet>) = set
                    .addresses
                    .iter()
                    .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                    .partition(|n| n.prefix_len() == n.max_prefix_len());
                for (suffix, interval, nets) in [("", true, blocks), ("_a", false, singles)] {
                    if nets.is_empty() {
                        continue;
                    }
                    let name = format!("{prefix}{i}_v{family}{suffix}");
                    self.address_set(&name, v6, interval, nets);
                    let mut statements = protocol_and_ports(set.protocol, &set.ports);
                    statements.push(matches(
                        payload(field, "daddr"),
                        Operator::EQ,
                        string(format!("@{name}")),
                    ));
                    statements.push(verdict());
                    self.rule("egress", statements);
                }
            }
        }
    }

    fn build(mut self, plan: &Plan, observe: &Observe, layout: &Layout) -> Ruleset {
        let host_if = layout.host_if.clone();
        let allowlist = plan.mode == Mode::Allowlist;
        let dns_gate = serves_dns(plan, observe);
        // What egress accepts: logged first as a new connection, when asked.
        let accept = || {
            if observe.allowed {
                goto("allowed")
            } else {
                Statement::Accept(None)
            }
        };
        self.objects.push(add(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: self.table.clone().into(),
            handle: None,
        })));
        self.chain("egress", None);
        self.chain("refuse", None);
        if observe.allowed {
            self.chain("allowed", None);
        }
        self.chain("forward", Some((NfChainType::Filter, NfHook::Forward, 0)));
        self.chain("input", Some((NfChainType::Filter, NfHook::Input, 0)));
        self.chain(
            "postrouting",
            Some((NfChainType::NAT, NfHook::Postrouting, 100)),
        );
        if dns_gate {
            self.chain(
                "prerouting",
                Some((NfChainType::NAT, NfHook::Prerouting, -100)),
            );
        }

        // Every refused packet is also logged to the sandbox's NFLOG group, where sbx reads its
        // events (see `log`); so is each new connection egress accepts, when asked.
        let log = |prefix: &'static str| {
            let mut log = Log::new(Some(u32::from(super::log::group(layout.slot))));
            log.queue_threshold = Some(1);
            log.prefix = Some(prefix.into());
            Statement::Log(Some(log))
        };
        if observe.audit {
            // Audit: reported and let through; the connection is then established, and its
            // further packets pass as replies do, unlogged.
            self.rule("refuse", vec![log(LOG_AUDIT), Statement::Accept(None)]);
        } else {
            self.rule("refuse", vec![log(LOG_DENIED)]);
            self.rule(
                "refuse",
                vec![
                    l4proto_in(&["tcp"]),
                    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
                ],
            );
            self.rule(
                "refuse",
                vec![Statement::Reject(Some(Reject::new(
                    Some(RejectType::ICMPX),
                    Some(RejectCode::AdminProhibited),
                )))],
            );
        }
        if observe.allowed {
            // The packet that creates the connection's conntrack entry (not yet confirmed):
            // `ct state new` alone would match every packet until the first reply, one event
            // per datagram of a UDP burst.
            let first = matches(
                Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                    Expression::Named(NamedExpression::CT(CT {
                        key: "status".into(),
                        family: None,
                        dir: None,
                    })),
                    string("confirmed"),
                ))),
                Operator::EQ,
                Expression::Number(0),
            );
            self.rule("allowed", vec![first, log(LOG_ALLOWED)]);
            self.rule("allowed", vec![Statement::Accept(None)]);
        }

        self.rule("forward", vec![iifname(&host_if), jump("egress")]);
        self.rule(
            "forward",
            vec![oifname(&host_if), established(), Statement::Accept(None)],
        );
        self.rule("forward", vec![oifname(&host_if), Statement::Drop(None)]);

        self.rule(
            "input",
            vec![iifname(&host_if), established(), Statement::Accept(None)],
        );
        // IPv6 neighbour discovery with the host end of the link: without it the sandbox cannot
        // resolve its gateway (IPv4's ARP never meets these chains).
        self.rule(
            "input",
            vec![
                iifname(&host_if),
                l4proto_in(&["ipv6-icmp"]),
                matches(
                    payload("icmpv6", "type"),
                    Operator::EQ,
                    anonymous_set(vec![
                        string("nd-neighbor-solicit"),
                        string("nd-neighbor-advert"),
                    ]),
                ),
                Statement::Accept(None),
            ],
        );
        // What the sandbox's kernel sends to the link by itself, not the command (which can
        // open no raw socket): router solicitations, which go unanswered as on a link without
        // an IPv6 router (the host is not the sandbox's router; its routes are set by sbx), and
        // multicast listener reports. Not the command's traffic, so not its denials.
        self.rule(
            "input",
            vec![
                iifname(&host_if),
                matches(
                    payload("ip6", "daddr"),
                    Operator::EQ,
                    Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(string("ff02::")),
                        len: 16,
                    })),
                ),
                l4proto_in(&["ipv6-icmp"]),
                matches(
                    payload("icmpv6", "type"),
                    Operator::EQ,
                    anonymous_set(vec![
                        string("nd-router-solicit"),
                        string("mld-listener-report"),
                        string("mld-listener-done"),
                        string("mld2-listener-report"),
                    ]),
                ),
                Statement::Drop(None),
            ],
        );
        if dns_gate {
            self.rule(
                "input",
                vec![
                    iifname(&host_if),
                    matches(
                        payload("ip", "daddr"),
                        Operator::EQ,
                        string(layout.host_v4.to_string()),
                    ),
                    l4proto_in(&["udp", "tcp"]),
                    matches(payload("th", "dport"), Operator::EQ, Expression::Number(53)),
                    Statement::Accept(None),
                ],
            );
        }
        self.rule("input", vec![iifname(&host_if), jump("egress")]);

        self.rule("egress", vec![established(), Statement::Accept(None)]);
        self.rule_sets("deny", &plan.deny, &|| goto("refuse"));
        if dns_gate {
            // DNS goes to sbx's service (prerouting) or nowhere: a resolver the policy allows by
            // address must not become a way around the name allowlist (nor, observing DNS in
            // open mode, a way around sbx's seeing every question).
            self.rule(
                "egress",
                vec![
                    l4proto_in(&["udp", "tcp"]),
                    matches(payload("th", "dport"), Operator::EQ, Expression::Number(53)),
                    goto("refuse"),
                ],
            );
            self.rule(
                "prerouting",
                vec![
                    iifname(&host_if),
                    matches(meta(MetaKey::Nfproto), Operator::EQ, string("ipv4")),
                    l4proto_in(&["udp", "tcp"]),
                    matches(payload("th", "dport"), Operator::EQ, Expression::Number(53)),
                    Statement::DNAT(Some(NAT {
                        addr: Some(string(layout.host_v4.to_string())),
                        family: Some(NATFamily::IP),
                        port: None,
                        flags: None,
                    })),
                ],
            );
        }
        if allowlist {
            // Names' addresses come through `answered_sets`, admitted with their TTLs.
            self.rule_sets("allow", &plan.literal_allow(), &accept);
            self.answered_sets(plan, &accept);
            self.rule("egress", vec![goto("refuse")]);
            // The host's loopback services the policy names: the sandbox sends them to the host
            // end of its link (see `inside`), and here they go on to 127.0.0.1.
            for (protocol, ports) in host_loopback_groups(plan) {
                let mut statements = vec![
                    iifname(&host_if),
                    matches(meta(MetaKey::Nfproto), Operator::EQ, string("ipv4")),
                    matches(
                        payload("ip", "daddr"),
                        Operator::EQ,
                        string(layout.host_v4.to_string()),
                    ),
                ];
                statements.extend(protocol_and_ports(protocol, &ports));
                statements.push(dnat_to("127.0.0.1"));
                self.rule("prerouting", statements);
            }
        } else if plan.mode == Mode::Open {
            self.rule("egress", vec![accept()]);
        } else {
            // Mode none has a link only in audit (see `Nftables::setup`): everything is refused.
            self.rule("egress", vec![goto("refuse")]);
        }

        self.rule(
            "postrouting",
            vec![
                iifname(&host_if),
                matches(meta(MetaKey::Oifname), Operator::NEQ, string(&host_if)),
                Statement::Masquerade(None),
            ],
        );

        Ruleset {
            table: self.table,
            objects: self.objects,
            elements: self.elements,
        }
    }
}
