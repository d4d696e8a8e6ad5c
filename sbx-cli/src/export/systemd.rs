//! A systemd unit drop-in: `IPAddressAllow=` / `IPAddressDeny=` (systemd.resource-control(5)).
//! They filter by address only, with no ports, no names, and allow winning over deny; the unit
//! shares the host's loopback.

use ipnet::IpNet;

use super::{Options, Out, at_rule, cidr_text, deny_name, port_spans, resolved_nets, target_nets};
use crate::diag::Diagnostic;
use crate::policy::{Mode, Policy, Rule, Target};

const ENGINE: &str = "systemd";

pub(super) fn export(policy: &Policy, options: &Options, out: &mut Out<'_>) -> String {
    let mut text = String::from("[Service]\n");
    match policy.mode.value {
        Mode::None => {
            text.push_str("# mode none: a network namespace with only its own loopback\n");
            text.push_str("PrivateNetwork=yes\n");
        }
        Mode::Open => {
            own_loopback(out);
            let mut denied = denied_blocks(policy, out);
            // sbx refuses the host's loopback in every mode unless an entry names it.
            denied.extend(["127.0.0.0/8", "::1/128"].map(|n| n.parse::<IpNet>().expect("a block")));
            text.push_str("# mode open: everything but the deny entries and the host's loopback\n");
            for net in IpNet::aggregate(&denied) {
                text.push_str(&format!("IPAddressDeny={}\n", cidr_text(&net)));
            }
        }
        Mode::Allowlist => {
            own_loopback(out);
            let denied = denied_blocks(policy, out);
            let mut allowed = Vec::new();
            for rule in &policy.allow {
                allowed.extend(allow_rule(rule, options, out));
            }
            text.push_str("# mode allowlist: the allowed blocks without the denied ones (in systemd an allow wins over a deny)\n");
            text.push_str("IPAddressDeny=any\n");
            let mut kept = Vec::new();
            for net in IpNet::aggregate(&allowed) {
                kept.extend(subtract(net, &denied));
            }
            for net in IpNet::aggregate(&kept) {
                text.push_str(&format!("IPAddressAllow={}\n", cidr_text(&net)));
            }
        }
    }
    text
}

fn own_loopback(out: &mut Out<'_>) {
    out.warn(Diagnostic::warning(
        "own-loopback",
        "a unit shares the host's loopback, so the servers the command starts on loopback are filtered like the host's: unreachable unless an entry names them (sbx gives the command a loopback of its own; narrower than sbx)",
    ));
}

fn denied_blocks(policy: &Policy, out: &mut Out<'_>) -> Vec<IpNet> {
    let mut blocks = Vec::new();
    for rule in &policy.deny {
        let nets = match deny_name(policy, rule, ENGINE, false, out) {
            Some(nets) => nets,
            None => target_nets(&rule.entry.target).into_iter().collect(),
        };
        if nets.is_empty() {
            continue;
        }
        if port_spans(&rule.entry).is_some() {
            out.error(
                at_rule(
                    Diagnostic::error(
                        "deny-ports",
                        "IPAddressDeny= denies whole addresses and cannot deny only some ports",
                    ),
                    rule,
                )
                .help("deny the whole address (every port), or use --format cilium"),
            );
            continue;
        }
        blocks.extend(nets);
    }
    blocks
}

fn allow_rule(rule: &Rule, options: &Options, out: &mut Out<'_>) -> Vec<IpNet> {
    let nets = match &rule.entry.target {
        Target::Wildcard(suffix) => {
            out.error(
                at_rule(
                    Diagnostic::error(
                        "wildcard-entry",
                        format!(
                            "IPAddressAllow= takes addresses, and `*.{suffix}` has none to write"
                        ),
                    ),
                    rule,
                )
                .help("use --format cilium (toFQDNs), or use sbx to enforce this policy"),
            );
            return Vec::new();
        }
        Target::Host(name) => {
            match resolved_nets(rule, true, out) {
                Some(nets) => nets,
                None => {
                    out.error(
                    at_rule(
                        Diagnostic::error(
                            "name-entry",
                            format!("IPAddressAllow= takes addresses, and `{name}` is a host name"),
                        ),
                        rule,
                    )
                    .help("export with --resolve to write the addresses it has now (they go stale)"),
                );
                    return Vec::new();
                }
            }
        }
        target => target_nets(target).into_iter().collect(),
    };
    let why = match port_spans(&rule.entry) {
        Some(_) => {
            "IPAddressAllow= cannot restrict ports or protocols: the whole address would be allowed"
        }
        None => {
            "IPAddressAllow= would let DNS (port 53) reach this destination, which sbx sends to its own DNS gate instead"
        }
    };
    if options.widen_ports {
        out.warn(at_rule(
            Diagnostic::warning(
                "widened-ports",
                format!("{why} (--widen-ports: wider than sbx)"),
            ),
            rule,
        ));
    } else {
        out.error(
            at_rule(Diagnostic::error("ports-not-expressible", why), rule).help(
                "pass --widen-ports to allow every port of it anyway, or use --format cilium",
            ),
        );
    }
    nets
}

/// `net` without every block of `denied`, as the fewest blocks.
fn subtract(net: IpNet, denied: &[IpNet]) -> Vec<IpNet> {
    if denied.iter().any(|d| d.contains(&net)) {
        return Vec::new();
    }
    if !denied.iter().any(|d| net.contains(d)) {
        return vec![net];
    }
    match net.subnets(net.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|half| subtract(half, denied)).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(text: &[&str]) -> Vec<IpNet> {
        text.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn subtracting_a_block_leaves_its_siblings() {
        let left = subtract("10.0.0.0/8".parse().unwrap(), &nets(&["10.0.0.0/10"]));
        assert_eq!(left, nets(&["10.64.0.0/10", "10.128.0.0/9"]));
        let left = subtract("192.0.2.0/30".parse().unwrap(), &nets(&["192.0.2.1/32"]));
        assert_eq!(left, nets(&["192.0.2.0/32", "192.0.2.2/31"]));
        assert!(subtract("192.0.2.0/30".parse().unwrap(), &nets(&["192.0.2.0/24"])).is_empty());
        assert_eq!(
            subtract("192.0.2.0/30".parse().unwrap(), &nets(&["198.51.100.0/24"])),
            nets(&["192.0.2.0/30"])
        );
    }
}
