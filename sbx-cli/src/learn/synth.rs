//! Observations to policy text: what one run of a command used, written as the allowlist that
//! admits exactly that. Offline and deterministic: the same observations give the same bytes.
//!
//! Everything here came from the sandboxed command (the names it asked, its process names, the
//! addresses it reached) and is hostile: names are written only as [`HostName`]s (letters,
//! digits, `-` and `.`), process names only after [`sanitised`], addresses as the parsed
//! addresses they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::policy::name::{HostName, is_strictly_below};
use crate::policy::{Entry, PortRange, Ports, Protocol, Rule, Target};
use crate::sandbox::dns::Asked;

/// One connection or send the command made that the backend let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    pub destination: IpAddr,
    pub port: Option<u16>,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// The process's name (eBPF only).
    pub command: Option<String>,
    pub time: SystemTime,
    /// A UDP socket connected to the destination (the eBPF backend reports the connect, not
    /// the datagrams sent on it).
    pub udp_connect: bool,
}

/// How to write the policy.
#[derive(Debug, Default)]
pub struct Options<'a> {
    /// The base policy's allow entries (composed), and how the learned file names the base in
    /// `extends`. The learned file sets `mode: allowlist`, under which they all take effect.
    pub base: Option<(&'a [Rule], String)>,
    /// Propose `*.parent` where at least this many names directly below `parent` were used.
    pub wildcards: Option<usize>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// What one entry of the learned policy stands for.
#[derive(Debug, Default, Clone)]
struct Stats {
    connections: usize,
    /// Sanitised process names.
    processes: BTreeSet<String>,
    /// The position of its first connection among all the run's connections, by time.
    first: usize,
    /// For a proposed wildcard: the names it stands for.
    names: BTreeSet<String>,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        if self.connections == 0 || other.first < self.first {
            self.first = other.first;
        }
        self.connections += other.connections;
        self.processes.extend(other.processes.iter().cloned());
        self.names.extend(other.names.iter().cloned());
    }
}

/// Destination and protocol (TCP or UDP) to the ports used, each with its statistics.
type Uses = BTreeMap<(Target, Protocol), BTreeMap<u16, Stats>>;

/// The learned policy's text: `version: 1`, `extends` the base if any, `mode: allowlist` and
/// one allow entry per destination and protocol the command used, less what the base allows.
pub fn synthesise(asked: &Asked, used: &[Used], options: &Options<'_>) -> String {
    let mut used: Vec<&Used> = used.iter().collect();
    // Stable: connections at the same instant keep the order the backend reported them in.
    used.sort_by_key(|u| u.time);
    let by_address = names_by_address(asked);
    // glibc and Go connect a UDP socket to each candidate address of a name, on the port asked
    // for, to choose among them (RFC 6724), and send nothing on it: such a connect beside a TCP
    // connection to the same address and port is that choice, not a use of UDP.
    let tcp: BTreeSet<(IpAddr, Option<u16>)> = used
        .iter()
        .filter(|u| u.protocol == TCP)
        .map(|u| (u.destination.to_canonical(), u.port))
        .collect();
    used.retain(|u| !(u.udp_connect && tcp.contains(&(u.destination.to_canonical(), u.port))));
    let mut uses = Uses::new();
    let mut connected: BTreeSet<&HostName> = BTreeSet::new();
    let mut last_connection: BTreeMap<IpAddr, (SystemTime, Vec<&HostName>)> = BTreeMap::new();
    let mut unwritable: BTreeMap<String, usize> = BTreeMap::new();
    for (index, u) in used.iter().enumerate() {
        let destination = u.destination.to_canonical();
        // The command's own loopback (the host's is never reachable in open mode), and DNS,
        // which in allowlist mode always goes to sbx's DNS service, whatever the address.
        if destination.is_loopback() || destination.is_unspecified() || u.port == Some(53) {
            continue;
        }
        let previous = last_connection.get(&destination);
        let names = names_for(
            by_address.get(&destination).map_or(&[][..], Vec::as_slice),
            previous,
            u.time,
        );
        last_connection.insert(destination, (u.time, names.clone()));
        connected.extend(names.iter().copied());
        let targets: Vec<Target> = if names.is_empty() {
            vec![Target::Addr(destination)]
        } else {
            names
                .iter()
                .map(|name| Target::Host(name.as_str().to_string()))
                .collect()
        };
        for target in targets {
            let (protocol, Some(port)) = (u.protocol, u.port) else {
                *unwritable.entry(describe_other(u, &target)).or_default() += 1;
                continue;
            };
            let protocol = match protocol {
                TCP => Protocol::Tcp,
                UDP => Protocol::Udp,
                _ => {
                    *unwritable.entry(describe_other(u, &target)).or_default() += 1;
                    continue;
                }
            };
            let stats = uses
                .entry((target, protocol))
                .or_default()
                .entry(port)
                .or_insert_with(|| Stats {
                    first: index,
                    ..Stats::default()
                });
            stats.connections += 1;
            if let Some(command) = &u.command {
                stats.processes.insert(sanitised(command));
            }
        }
    }
    if let Some((base, _)) = &options.base {
        subtract_base(&mut uses, base);
    }
    if let Some(n) = options.wildcards {
        propose_wildcards(&mut uses, n.max(1));
    }
    let entries = entries(uses);
    let unused: Vec<(&HostName, String)> = asked
        .names
        .iter()
        .filter(|(name, _)| !connected.contains(name))
        .map(|(name, a)| {
            let types: Vec<&str> = a.types.iter().map(String::as_str).collect();
            (name, types.join(", "))
        })
        .collect();
    render(&entries, asked, &unused, &unwritable, options)
}

/// Each answered address, with the names whose answers held it and when each first did.
fn names_by_address(asked: &Asked) -> BTreeMap<IpAddr, Vec<(SystemTime, &HostName)>> {
    let mut by_address: BTreeMap<IpAddr, Vec<(SystemTime, &HostName)>> = BTreeMap::new();
    for (name, a) in &asked.names {
        for (addr, time) in &a.addresses {
            by_address
                .entry(addr.to_canonical())
                .or_default()
                .push((*time, name));
        }
    }
    for names in by_address.values_mut() {
        names.sort();
    }
    by_address
}

/// The names a connection at `time` to an address went by: the names first answered with the
/// address since the `previous` connection there, all of them, sorted (two lookups racing, the
/// order of their answers is chance, and either name may be used next time); if none, the
/// previous connection's names; with no previous connection, the name answered last before this
/// one (a resolver's cache aside, the name just looked up), or when none was answered before it
/// (clocks of the backend and of sbx differ by a little), the first answered.
fn names_for<'a>(
    names: &[(SystemTime, &'a HostName)],
    previous: Option<&(SystemTime, Vec<&'a HostName>)>,
    time: SystemTime,
) -> Vec<&'a HostName> {
    let since = previous.map(|(at, _)| *at);
    let mut fresh: Vec<&HostName> = names
        .iter()
        .filter(|(answered, _)| *answered <= time && since.is_none_or(|s| *answered > s))
        .map(|(_, name)| *name)
        .collect();
    if !fresh.is_empty() {
        fresh.sort();
        fresh.dedup();
        return fresh;
    }
    if let Some((_, before)) = previous {
        return before.clone();
    }
    names
        .iter()
        .rev()
        .find(|(answered, _)| *answered <= time)
        .or_else(|| names.first())
        .map(|(_, name)| *name)
        .into_iter()
        .collect()
}

/// A use no entry can say exactly (a protocol without ports: ICMP, …), for a comment.
fn describe_other(u: &Used, target: &Target) -> String {
    let protocol = match u.protocol {
        1 | 58 => "icmp".to_string(),
        n => format!("protocol {n}"),
    };
    format!("{} ({protocol})", target_text(target))
}

/// Removes every port the base policy's allow entries already admit (deny entries need no
/// look: what they deny was refused while learning, so it was never used). Entries are compared
/// as the policy compares them ([`Entry::covers`]): a name is never covered by an address entry,
/// since the DNS service would still refuse the name.
fn subtract_base(uses: &mut Uses, base: &[Rule]) {
    for ((target, protocol), ports) in uses.iter_mut() {
        ports.retain(|port, _| {
            let wanted = Entry {
                target: target.clone(),
                ports: Ports::Only(smallvec::smallvec![PortRange {
                    first: *port,
                    last: *port,
                }]),
                protocol: *protocol,
            };
            !base.iter().any(|rule| rule.entry.covers(&wanted))
        });
    }
    uses.retain(|_, ports| !ports.is_empty());
}

/// Replaces names by `*.parent` where at least `n` names directly below `parent` were used. A
/// wildcard matches every name below its suffix at any depth and never the suffix itself, so it
/// takes in every used name below `parent` (with the union of their ports, per protocol) and
/// leaves `parent`'s own entry as it is. No wildcard is proposed directly under a public suffix
/// (`*.co.uk` would admit every registrant's names) nor over a single label (not a policy
/// wildcard). Deeper parents go first, so `*.a.example.com` is preferred to `*.example.com`.
fn propose_wildcards(uses: &mut Uses, n: usize) {
    let names: BTreeSet<String> = uses
        .keys()
        .filter_map(|(target, _)| match target {
            Target::Host(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut children: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for name in &names {
        if let Some((_, parent)) = name.split_once('.')
            && parent.contains('.')
            && psl::suffix_str(parent) != Some(parent)
        {
            children.entry(parent.to_string()).or_default().insert(name);
        }
    }
    let mut parents: Vec<&String> = children
        .iter()
        .filter(|(_, c)| c.len() >= n)
        .map(|(p, _)| p)
        .collect();
    parents.sort_by_key(|p| (std::cmp::Reverse(p.matches('.').count()), p.as_str()));
    for parent in parents {
        // A deeper wildcard proposed before is taken in too: this one covers it.
        let below: Vec<(Target, Protocol)> = uses
            .keys()
            .filter(|(target, _)| match target {
                Target::Host(name) | Target::Wildcard(name) => is_strictly_below(name, parent),
                _ => false,
            })
            .cloned()
            .collect();
        for key in below {
            let Some(ports) = uses.remove(&key) else {
                continue;
            };
            let merged = uses
                .entry((Target::Wildcard(parent.clone()), key.1))
                .or_default();
            for (port, mut stats) in ports {
                if let Target::Host(name) = &key.0 {
                    stats.names.insert(name.clone());
                }
                match merged.get_mut(&port) {
                    Some(existing) => existing.add(&stats),
                    None => {
                        merged.insert(port, stats);
                    }
                }
            }
        }
    }
}

/// One entry of the learned policy.
#[derive(Debug)]
struct Learned {
    target: Target,
    protocol: Protocol,
    ports: Vec<u16>,
    stats: Stats,
    /// 1 for the entry the command used first.
    first_use: usize,
}

/// The entries in the file's order (names, wildcards by their suffix among them, then
/// addresses; TCP before UDP), numbered by first use.
fn entries(uses: Uses) -> Vec<Learned> {
    let mut entries: Vec<Learned> = uses
        .into_iter()
        .map(|((target, protocol), ports)| {
            let mut stats = Stats::default();
            for s in ports.values() {
                stats.add(s);
            }
            Learned {
                target,
                protocol,
                ports: ports.into_keys().collect(),
                stats,
                first_use: 0,
            }
        })
        .collect();
    entries.sort_by(|a, b| {
        sort_key(&a.target)
            .cmp(&sort_key(&b.target))
            .then(a.protocol.cmp(&b.protocol))
    });
    let mut by_first: Vec<usize> = (0..entries.len()).collect();
    by_first.sort_by_key(|&i| (entries[i].stats.first, i));
    for (rank, i) in by_first.into_iter().enumerate() {
        entries[i].first_use = rank + 1;
    }
    entries
}

/// Names in text order, a wildcard just before its suffix; then addresses in numeric order.
fn sort_key(target: &Target) -> (u8, &str, u8, Option<IpAddr>) {
    match target {
        Target::Wildcard(suffix) => (0, suffix, 0, None),
        Target::Host(name) => (0, name, 1, None),
        Target::Addr(addr) => (1, "", 0, Some(*addr)),
        Target::Net(_) => (2, "", 0, None),
    }
}

fn target_text(target: &Target) -> String {
    match target {
        Target::Host(name) => name.clone(),
        Target::Wildcard(suffix) => format!("*.{suffix}"),
        Target::Addr(addr) => addr.to_string(),
        Target::Net(net) => net.to_string(),
    }
}

/// A scalar as YAML reads it back as the same string. Names and addresses hold only letters,
/// digits, `.`, `-`, `:`, `*`, `[` and `]`; one that starts with a letter and holds a `.` or a
/// `:` is never read as a number, a boolean or null (`null`, `yes`, `1e5` and `1.e5` are
/// quoted), and `*` and `[`, which YAML reads itself, only come first.
fn scalar(text: &str) -> String {
    let plain = text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text.contains(['.', ':'])
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if plain {
        text.to_string()
    } else {
        quoted(text)
    }
}

/// A YAML double-quoted scalar: `"` and `\` escaped, and every character that is not printable
/// ASCII as `\xNN` or `\uNNNN`, so that no line break or control character reaches the file.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// A process name fit for a comment: letters, digits and `.`, `_`, `+`, `-` as they are, every
/// other byte as `\xNN` (a kernel `comm` is any 15 bytes the process chose: a line break would
/// end the comment and start YAML of its choosing).
pub fn sanitised(command: &str) -> String {
    let mut out = String::new();
    for b in command.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render(
    entries: &[Learned],
    asked: &Asked,
    unused: &[(&HostName, String)],
    unwritable: &BTreeMap<String, usize>,
    options: &Options<'_>,
) -> String {
    let dropped = asked.dropped;
    let mut out = String::new();
    out.push_str(
        "# Written by `sbx learn`: what one run of the command reached, as an allowlist.\n\
         # Each entry: the connections made (TCP connects, UDP peers), the processes that made\n\
         # them (eBPF backend only) and its first use (1: the destination reached first).\n\
         # Review it before use: every name and address here is what the command asked for.\n",
    );
    out.push_str("version: 1\n");
    if let Some((_, path)) = &options.base {
        let _ = writeln!(out, "extends:\n  - {}", quoted(path));
    }
    let base_allows = options
        .base
        .as_ref()
        .is_some_and(|(allow, _)| !allow.is_empty());
    if entries.is_empty() && !base_allows {
        // Nothing was reached: the policy of a job without network.
        out.push_str("network:\n  mode: none\n");
    } else if entries.is_empty() {
        out.push_str("network:\n  mode: allowlist\n  allow: []\n");
    } else {
        out.push_str("network:\n  mode: allowlist\n  allow:\n");
    }
    for e in entries {
        let mut comment = format!(
            "    # {}, first use {}",
            plural(e.stats.connections, "connection", "connections"),
            e.first_use
        );
        if !e.stats.processes.is_empty() {
            let processes: Vec<&str> = e.stats.processes.iter().map(String::as_str).collect();
            let _ = write!(comment, ", by {}", processes.join(", "));
        }
        // The CNAME chain, so that a reviewer sees which provider the name leads to.
        let cnames = match &e.target {
            Target::Host(name) => HostName::parse(name)
                .ok()
                .and_then(|name| asked.names.get(&name))
                .map(|a| a.cnames.iter().map(HostName::as_str).collect::<Vec<_>>())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if !cnames.is_empty() {
            let _ = write!(comment, ", via {}", cnames.join(", "));
        }
        out.push_str(&comment);
        out.push('\n');
        if !e.stats.names.is_empty() {
            let names: Vec<&str> = e.stats.names.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "    # proposed for {}: {}",
                plural(names.len(), "name", "names"),
                names.join(", ")
            );
        }
        let target = target_text(&e.target);
        match (e.protocol, e.ports.as_slice()) {
            (Protocol::Tcp, [port]) => {
                let short = match e.target {
                    Target::Addr(IpAddr::V6(_)) => format!("[{target}]:{port}"),
                    _ => format!("{target}:{port}"),
                };
                let _ = writeln!(out, "    - {}", scalar(&short));
            }
            (protocol, ports) => {
                let key = match e.target {
                    Target::Addr(_) => "ip",
                    _ => "host",
                };
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                let _ = writeln!(out, "    - {key}: {}", scalar(&target));
                let _ = writeln!(out, "      ports: [{}]", ports.join(", "));
                if protocol != Protocol::Tcp {
                    let _ = writeln!(out, "      protocol: {}", protocol.as_str());
                }
            }
        }
    }
    if !unused.is_empty() {
        out.push_str("  # Asked of DNS, never connected to (not allowed):\n");
        for (name, types) in unused {
            let _ = writeln!(out, "  #   {name} ({types})");
        }
    }
    if dropped > 0 {
        let _ = writeln!(
            out,
            "  # {dropped} more {} asked of DNS, not recorded (more than {} names)",
            if dropped == 1 { "name" } else { "names" },
            crate::sandbox::dns::RECORDED_NAMES
        );
    }
    if !unwritable.is_empty() {
        out.push_str("  # Used, and not written (an entry without ports allows every protocol):\n");
        for (what, count) in unwritable {
            let _ = writeln!(out, "  #   {what}, {}", plural(*count, "time", "times"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Loader, Policy};
    use crate::sandbox::dns::AskedName;
    use std::time::Duration;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn name(text: &str) -> HostName {
        HostName::parse(text).unwrap()
    }

    /// `name` asked at `time`, answered with `addrs`.
    fn ask(asked: &mut Asked, text: &str, addrs: &[&str], time: u64) {
        let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        asked.record(
            &name(text),
            hickory_resolver::proto::rr::RecordType::A,
            &addrs,
            [],
            at(time),
        );
    }

    fn used(dest: &str, port: u16, protocol: u8, command: Option<&str>, time: u64) -> Used {
        Used {
            destination: dest.parse().unwrap(),
            port: Some(port),
            protocol,
            command: command.map(str::to_string),
            time: at(time),
            udp_connect: false,
        }
    }

    /// The script of the end-to-end test, observed: two names on TCP ports, one over UDP, an
    /// address no name led to, its own loopback server, its DNS, a name never connected to.
    fn script() -> (Asked, Vec<Used>) {
        let mut asked = Asked::default();
        ask(&mut asked, "web.learn.test", &["10.9.0.2"], 1);
        ask(&mut asked, "api.learn.test", &["10.9.0.3"], 3);
        ask(&mut asked, "time.learn.test", &["10.9.0.4"], 5);
        ask(&mut asked, "unused.learn.test", &[], 7);
        let used = vec![
            used("10.9.0.2", 8080, TCP, Some("curl"), 2),
            used("10.9.0.3", 8443, TCP, Some("curl"), 4),
            used("10.9.0.3", 8443, TCP, Some("python3"), 4),
            used("10.9.0.4", 1234, UDP, Some("nc"), 6),
            used("10.9.0.9", 9000, TCP, Some("curl"), 8),
            used("127.0.0.1", 7000, TCP, Some("curl"), 9),
            used("::ffff:127.0.0.1", 7000, TCP, Some("curl"), 9),
            used("10.9.0.1", 53, UDP, Some("curl"), 0),
        ];
        (asked, used)
    }

    /// The allow entries `text` gives when sbx loads it, as YAML short or flow forms.
    fn loaded_allow(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learned.yaml");
        std::fs::write(&path, text).unwrap();
        let mut loader = Loader::new();
        let policy = loader
            .load(&path)
            .unwrap_or_else(|| panic!("{:?}\n{text}", loader.diagnostics()));
        assert!(
            loader.diagnostics().is_empty(),
            "{:?}",
            loader.diagnostics()
        );
        policy.allow.iter().map(|r| r.entry.to_yaml()).collect()
    }

    #[test]
    fn names_as_names_ports_udp_long_form_addresses_loopback_and_dns_left_out() {
        let (asked, used) = script();
        let text = synthesise(&asked, &used, &Options::default());
        assert_eq!(
            text,
            "\
# Written by `sbx learn`: what one run of the command reached, as an allowlist.
# Each entry: the connections made (TCP connects, UDP peers), the processes that made
# them (eBPF backend only) and its first use (1: the destination reached first).
# Review it before use: every name and address here is what the command asked for.
version: 1
network:
  mode: allowlist
  allow:
    # 2 connections, first use 2, by curl, python3
    - api.learn.test:8443
    # 1 connection, first use 3, by nc
    - host: time.learn.test
      ports: [1234]
      protocol: udp
    # 1 connection, first use 1, by curl
    - web.learn.test:8080
    # 1 connection, first use 4, by curl
    - \"10.9.0.9:9000\"
  # Asked of DNS, never connected to (not allowed):
  #   unused.learn.test (A)
"
        );
        assert_eq!(
            loaded_allow(&text),
            [
                "\"api.learn.test:8443\"",
                "{host: time.learn.test, ports: [1234], protocol: udp}",
                "\"web.learn.test:8080\"",
                "\"10.9.0.9:9000\""
            ]
        );
    }

    #[test]
    fn the_same_run_gives_the_same_bytes_whatever_order_it_was_reported_in() {
        let (asked, mut used) = script();
        let first = synthesise(&asked, &used, &Options::default());
        used.reverse();
        assert_eq!(synthesise(&asked, &used, &Options::default()), first);
        used.rotate_left(3);
        assert_eq!(synthesise(&asked, &used, &Options::default()), first);
    }

    #[test]
    fn several_ports_take_the_long_form_and_ipv6_is_bracketed() {
        let mut asked = Asked::default();
        ask(&mut asked, "multi.learn.test", &["10.9.0.2"], 1);
        let used = [
            used("10.9.0.2", 443, TCP, None, 2),
            used("10.9.0.2", 80, TCP, None, 3),
            used("10.9.0.2", 80, UDP, None, 4),
            used("2001:db8::7", 8443, TCP, None, 5),
            used("2001:db8::7", 5000, UDP, None, 6),
        ];
        let text = synthesise(&asked, &used, &Options::default());
        assert!(
            text.contains("    - host: multi.learn.test\n      ports: [80, 443]\n    #"),
            "{text}"
        );
        assert_eq!(
            loaded_allow(&text),
            [
                "{host: multi.learn.test, ports: [80, 443]}",
                "{host: multi.learn.test, ports: [80], protocol: udp}",
                "\"[2001:db8::7]:8443\"",
                "{ip: 2001:db8::7, ports: [5000], protocol: udp}",
            ]
        );
    }

    #[test]
    fn address_selection_probes_beside_a_tcp_connection_are_not_udp_uses() {
        let mut asked = Asked::default();
        ask(&mut asked, "web.learn.test", &["10.9.0.2"], 1);
        let probe = |dest: &str, port: u16| Used {
            udp_connect: true,
            ..used(dest, port, UDP, None, 2)
        };
        let used = [
            probe("10.9.0.2", 443),
            used("10.9.0.2", 443, TCP, None, 3),
            probe("10.9.0.2", 5353),
        ];
        assert_eq!(
            loaded_allow(&synthesise(&asked, &used, &Options::default())),
            [
                "\"web.learn.test:443\"",
                "{host: web.learn.test, ports: [5353], protocol: udp}"
            ]
        );
    }

    #[test]
    fn an_address_is_written_as_the_name_last_answered_with_it_before_the_connection() {
        let mut asked = Asked::default();
        ask(&mut asked, "a.cdn.test", &["10.9.0.2"], 1);
        ask(&mut asked, "b.cdn.test", &["10.9.0.2"], 3);
        let used = [
            used("10.9.0.2", 443, TCP, None, 2),
            used("10.9.0.2", 8443, TCP, None, 4),
        ];
        assert_eq!(
            loaded_allow(&synthesise(&asked, &used, &Options::default())),
            ["\"a.cdn.test:443\"", "\"b.cdn.test:8443\""]
        );
    }

    /// Two lookups racing, answered with one address, then one connection: which answer came
    /// last is chance, so both names are written, and learning twice gives the same file.
    #[test]
    fn names_answered_together_before_one_connection_are_all_written() {
        let mut first = Asked::default();
        ask(&mut first, "a.cdn.test", &["10.9.0.2"], 1);
        ask(&mut first, "b.cdn.test", &["10.9.0.2"], 2);
        let mut second = Asked::default();
        ask(&mut second, "b.cdn.test", &["10.9.0.2"], 1);
        ask(&mut second, "a.cdn.test", &["10.9.0.2"], 2);
        let used = [
            used("10.9.0.2", 443, TCP, None, 3),
            used("10.9.0.2", 443, TCP, None, 4),
        ];
        let text = synthesise(&first, &used, &Options::default());
        assert_eq!(text, synthesise(&second, &used, &Options::default()));
        assert_eq!(
            loaded_allow(&text),
            ["\"a.cdn.test:443\"", "\"b.cdn.test:443\""]
        );
    }

    fn base(text: &str) -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.yaml");
        std::fs::write(&path, text).unwrap();
        let policy = Loader::new().load(&path).unwrap();
        (dir, policy)
    }

    #[test]
    fn with_a_base_it_extends_it_and_repeats_nothing_it_allows() {
        let (dir, base) = base(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - \"*.learn.test:8443\"\n    \
             - web.learn.test\n    - 10.9.0.0/24:9000\n",
        );
        let (asked, used) = script();
        let options = Options {
            base: Some((&base.allow, "base.yaml".into())),
            wildcards: None,
        };
        let text = synthesise(&asked, &used, &options);
        assert!(
            text.contains("version: 1\nextends:\n  - \"base.yaml\"\n"),
            "{text}"
        );
        std::fs::write(dir.path().join("learned.yaml"), &text).unwrap();
        let mut loader = Loader::new();
        let learned = loader.load(&dir.path().join("learned.yaml")).unwrap();
        let own: Vec<String> = learned
            .allow
            .iter()
            .filter(|r| r.origin.path.ends_with("learned.yaml"))
            .map(|r| r.entry.to_yaml())
            .collect();
        assert_eq!(
            own,
            ["{host: time.learn.test, ports: [1234], protocol: udp}"]
        );
    }

    #[test]
    fn a_base_in_open_mode_allows_nothing_to_subtract() {
        let (dir, base) =
            base("version: 1\nnetwork:\n  mode: open\n  deny: [10.9.9.9, \"2001:db8::9\"]\n");
        let (asked, used) = script();
        let options = Options {
            base: Some((
                &base.allow,
                dir.path().join("base.yaml").display().to_string(),
            )),
            wildcards: None,
        };
        assert_eq!(loaded_allow(&synthesise(&asked, &used, &options)).len(), 4);
    }

    #[test]
    fn wildcards_are_proposed_from_n_siblings_keeping_the_apex_and_public_suffixes() {
        let mut asked = Asked::default();
        let mut seen = Vec::new();
        for (i, n) in [
            "a.pkg.learn.test",
            "b.pkg.learn.test",
            "c.pkg.learn.test",
            "deep.c.pkg.learn.test",
            "pkg.learn.test",
            "x.co.uk",
            "y.co.uk",
            "z.co.uk",
            "one.other.test",
        ]
        .iter()
        .enumerate()
        {
            let addr = format!("10.9.1.{}", i + 1);
            ask(&mut asked, n, &[&addr], 2 * i as u64);
            seen.push(used(&addr, 443, TCP, None, 2 * i as u64 + 1));
        }
        let options = |n| Options {
            base: None,
            wildcards: Some(n),
        };
        let text = synthesise(&asked, &seen, &options(3));
        assert!(
            text.contains(
                "    # 4 connections, first use 1\n    # proposed for 4 names: a.pkg.learn.test, \
                 b.pkg.learn.test, c.pkg.learn.test, deep.c.pkg.learn.test\n    - \
                 \"*.pkg.learn.test:443\"\n"
            ),
            "{text}"
        );
        assert_eq!(
            loaded_allow(&text),
            [
                "\"one.other.test:443\"",
                "\"*.pkg.learn.test:443\"",
                "\"pkg.learn.test:443\"",
                "\"x.co.uk:443\"",
                "\"y.co.uk:443\"",
                "\"z.co.uk:443\""
            ]
        );
        assert_eq!(
            loaded_allow(&synthesise(&asked, &seen, &options(5))).len(),
            9
        );
        assert_eq!(
            synthesise(&asked, &seen, &Options::default()),
            synthesise(&asked, &seen, &options(10))
        );
    }

    #[test]
    fn hostile_process_names_stay_inside_their_comment() {
        let mut asked = Asked::default();
        ask(&mut asked, "web.learn.test", &["10.9.0.2"], 1);
        let used = [used(
            "10.9.0.2",
            443,
            TCP,
            Some("x\n  - evil.test\r#\u{1b}[2J\"'"),
            2,
        )];
        let text = synthesise(&asked, &used, &Options::default());
        assert!(
            text.contains("by x\\x0a\\x20\\x20-\\x20evil.test\\x0d\\x23\\x1b\\x5b2J\\x22\\x27\n"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'));
        assert_eq!(loaded_allow(&text), ["\"web.learn.test:443\""]);
    }

    #[test]
    fn names_that_yaml_would_read_as_something_else_are_quoted() {
        let mut asked = Asked::default();
        for (i, n) in ["null", "yes", "0x1f", "1.e5", "true.test"]
            .iter()
            .enumerate()
        {
            let addr = format!("10.9.2.{}", i + 1);
            ask(&mut asked, n, &[&addr], 2 * i as u64);
        }
        let seen: Vec<Used> = (0..5)
            .map(|i| used(&format!("10.9.2.{}", i + 1), 53000, UDP, None, 2 * i + 1))
            .collect();
        let text = synthesise(&asked, &seen, &Options::default());
        assert!(text.contains("host: \"null\"\n"), "{text}");
        assert!(text.contains("host: \"1.e5\"\n"), "{text}");
        assert!(text.contains("host: true.test\n"), "{text}");
        assert_eq!(loaded_allow(&text).len(), 5);
    }

    #[test]
    fn cname_targets_are_named_in_the_comment_and_the_name_asked_is_written() {
        let mut asked = Asked::default();
        asked.record(
            &name("www.learn.test"),
            hickory_resolver::proto::rr::RecordType::A,
            &["10.9.0.2".parse().unwrap()],
            [name("edge.cdn.test")],
            at(1),
        );
        let text = synthesise(
            &asked,
            &[used("10.9.0.2", 443, TCP, None, 2)],
            &Options::default(),
        );
        assert!(
            text.contains(
                "    # 1 connection, first use 1, via edge.cdn.test\n    - www.learn.test:443\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn names_past_the_recording_limit_are_counted_not_recorded() {
        let mut asked = Asked::default();
        for i in 0..crate::sandbox::dns::RECORDED_NAMES + 3 {
            ask(&mut asked, &format!("n{i}.learn.test"), &[], 0);
        }
        ask(&mut asked, "n0.learn.test", &["10.9.0.2"], 1);
        assert_eq!(asked.names.len(), crate::sandbox::dns::RECORDED_NAMES);
        assert_eq!(asked.dropped, 3);
        let text = synthesise(&asked, &[], &Options::default());
        assert!(
            text.contains("  # 3 more names asked of DNS, not recorded (more than 10000 names)\n"),
            "{}",
            &text[text.len() - 300..]
        );
    }

    #[test]
    fn a_recorded_name_keeps_the_first_time_each_address_was_answered() {
        let mut asked = Asked::default();
        ask(&mut asked, "web.learn.test", &["10.9.0.2"], 1);
        ask(&mut asked, "web.learn.test", &["10.9.0.2", "10.9.0.3"], 5);
        let AskedName { addresses, .. } = &asked.names[&name("web.learn.test")];
        assert_eq!(
            addresses.values().copied().collect::<Vec<_>>(),
            [at(1), at(5)]
        );
    }
}
