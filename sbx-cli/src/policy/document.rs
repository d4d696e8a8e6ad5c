//! One policy file on its own: its YAML turned into typed fields, every problem in it collected
//! (not only the first), nothing inherited from `extends` yet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use foldhash::fast::RandomState;

use super::entry::{self, Entry, EntryError, Ports, Protocol};
use super::yaml::{self, Kind, Node};
use super::{DnsServer, Mode, OnResolveFailure, Origin, Rule, Sourced};
use crate::diag::{Diagnostic, FileId, Pos, Span};

#[derive(Debug, Default)]
pub struct Document {
    pub name: Option<String>,
    pub description: Option<String>,
    pub extends: Vec<Sourced<String>>,
    pub mode: Option<Sourced<Mode>>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub dns_servers: Vec<Sourced<DnsServer>>,
    pub dns_timeout: Option<Sourced<Duration>>,
    pub dns_grace: Option<Sourced<Duration>>,
    pub dns_attempts: Option<Sourced<u32>>,
    pub on_resolve_failure: Option<Sourced<OnResolveFailure>>,
}

pub const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_DNS_GRACE: Duration = Duration::from_secs(600);
pub const MAX_DNS_ATTEMPTS: u32 = 10;

/// Parses one file. Problems go to `diagnostics`; what could be read is returned all the same,
/// so that composition and later checks can still report their own findings.
pub fn parse(
    file: FileId,
    path: &std::sync::Arc<str>,
    text: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Document {
    let mut reader = Reader {
        file,
        path: path.clone(),
        diagnostics,
    };
    let parsed = match yaml::parse(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            reader.error("yaml-syntax", format!("invalid YAML: {}", e.message), e.at);
            return Document::default();
        }
    };
    for dup in &parsed.duplicate_keys {
        let d = Diagnostic::error("duplicate-key", format!("`{}` appears twice", dup.key))
            .at(file, dup.at)
            .label("second occurrence")
            .related(file, dup.first, "first here")
            .help("merge the two into one");
        reader.diagnostics.push(d);
    }
    let Some(root) = parsed.root else {
        let start = Pos {
            line: 1,
            column: 1,
            offset: 0,
        };
        reader.diagnostics.push(
            Diagnostic::error("missing-version", "empty policy file")
                .at(file, Span { start, end: start })
                .help("a policy starts with `version: 1`; see `sbx check --help` for an example"),
        );
        return Document::default();
    };
    reader.document(&root)
}

struct Reader<'a> {
    file: FileId,
    path: std::sync::Arc<str>,
    diagnostics: &'a mut Vec<Diagnostic>,
}

const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "extends",
    "network",
    "dns",
];
const NETWORK_KEYS: &[&str] = &["mode", "allow", "deny"];
const DNS_KEYS: &[&str] = &[
    "servers",
    "timeout",
    "attempts",
    "on_resolve_failure",
    "grace",
];
const ENTRY_KEYS: &[&str] = &["host", "ip", "cidr", "ports", "protocol"];

impl Reader<'_> {
    fn sourced<T>(&self, value: T, node: &Node) -> Sourced<T> {
        Sourced {
            value,
            origin: self.origin(node),
        }
    }

    fn origin(&self, node: &Node) -> Origin {
        Origin {
            file: self.file,
            path: self.path.clone(),
            span: node.span,
        }
    }

    fn error(
        &mut self,
        code: &'static str,
        message: impl Into<String>,
        at: Span,
    ) -> &mut Diagnostic {
        self.diagnostics
            .push(Diagnostic::error(code, message).at(self.file, at));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn entry_error(&mut self, e: EntryError, at: &Node) {
        let d = Diagnostic::error(e.code, e.message)
            .at(self.file, at.span)
            .help_opt(e.help);
        self.diagnostics.push(d);
    }

    fn type_error(&mut self, what: &str, expected: &str, node: &Node) {
        let found = node.describe();
        self.error(
            "invalid-type",
            format!("`{what}` must be {expected}, found {found}"),
            node.span,
        );
    }

    /// The mapping's entries by key; unknown keys are reported with a suggestion.
    fn mapping<'n, 's>(
        &mut self,
        node: &'n Node<'s>,
        what: &str,
        known: &[&str],
    ) -> Vec<(&'n str, &'n Node<'s>)> {
        let Kind::Map(entries) = &node.kind else {
            self.type_error(what, "a mapping", node);
            return Vec::new();
        };
        let mut fields = Vec::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.error(
                    "invalid-type",
                    format!("keys in `{what}` must be strings"),
                    key.span,
                );
                continue;
            };
            if known.contains(&name) {
                fields.push((name, value));
                continue;
            }
            let suggestion = known
                .iter()
                .map(|k| (strsim::jaro_winkler(name, k), *k))
                .filter(|(score, _)| *score > 0.7)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k);
            let help = match suggestion {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("`{what}` takes: {}", known.join(", ")),
            };
            self.error(
                "unknown-key",
                format!("unknown key `{name}` in `{what}`"),
                key.span,
            )
            .help = Some(help);
        }
        fields
    }

    fn string<'n>(&mut self, what: &str, node: &'n Node) -> Option<&'n str> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => Some(text),
            _ => {
                self.type_error(what, "a string", node);
                None
            }
        }
    }

    /// A list; an empty value (`allow:` with nothing under it) counts as an empty list.
    fn list<'n, 's>(&mut self, what: &str, node: &'n Node<'s>) -> &'n [Node<'s>] {
        match &node.kind {
            Kind::Seq(items) => items,
            _ if node.is_null() => &[],
            _ => {
                self.type_error(what, "a list", node);
                self.diagnostics.last_mut().expect("just pushed").help = Some(format!(
                    "write a YAML list, as in `{what}: [...]` or one `- item` per line"
                ));
                &[]
            }
        }
    }

    fn document(&mut self, root: &Node) -> Document {
        let mut doc = Document::default();
        let fields = self.mapping(root, "policy", TOP_KEYS);
        let mut saw_version = false;
        for (key, value) in fields {
            match key {
                "version" => {
                    saw_version = true;
                    self.version(value);
                }
                "name" => doc.name = self.string("name", value).map(str::to_owned),
                "description" => {
                    doc.description = self.string("description", value).map(str::to_owned)
                }
                "extends" => {
                    for item in self.list("extends", value) {
                        if let Some(path) = self.string("extends", item) {
                            doc.extends.push(Sourced {
                                value: path.to_owned(),
                                origin: self.origin(item),
                            });
                        }
                    }
                }
                "network" => self.network(value, &mut doc),
                "dns" => self.dns(value, &mut doc),
                _ => unreachable!("mapping() returns known keys only"),
            }
        }
        if !saw_version {
            let at = Span {
                start: root.span.start,
                end: root.span.start,
            };
            self.error("missing-version", "missing `version`", at).help =
                Some("add `version: 1` as the first line".into());
        }
        doc
    }

    /// A duration with a unit (`2s`, `500ms`) within `range`.
    fn duration(
        &mut self,
        key: &str,
        value: &Node,
        range: std::ops::RangeInclusive<Duration>,
        range_text: &str,
    ) -> Option<Duration> {
        let text = self.string(key, value)?;
        match humantime::parse_duration(text) {
            Ok(d) if range.contains(&d) => Some(d),
            Ok(_) => {
                self.error(
                    "invalid-duration",
                    format!("{key} `{text}` is outside {range_text}"),
                    value.span,
                );
                None
            }
            Err(_) => {
                self.error(
                    "invalid-duration",
                    format!("`{text}` is not a duration"),
                    value.span,
                )
                .help = Some("write a number with a unit, such as `2s` or `500ms`".into());
                None
            }
        }
    }

    fn version(&mut self, node: &Node) {
        match &node.kind {
            Kind::Scalar { text, plain: true } if text == "1" => {}
            Kind::Scalar { text, plain: true } if text.parse::<u64>().is_ok() => {
                self.error(
                    "unsupported-version",
                    format!("policy version {text} is not supported"),
                    node.span,
                )
                .help = Some("this sbx reads `version: 1`".into());
            }
            _ => {
                let found = node.describe();
                self.error(
                    "invalid-type",
                    format!("`version` must be the number 1, found {found}"),
                    node.span,
                );
            }
        }
    }

    fn network(&mut self, node: &Node, doc: &mut Document) {
        for (key, value) in self.mapping(node, "network", NETWORK_KEYS) {
            match key {
                "mode" => {
                    let Some(text) = self.string("mode", value) else {
                        continue;
                    };
                    match Mode::parse(text) {
                        Some(mode) => {
                            doc.mode = Some(Sourced {
                                value: mode,
                                origin: self.origin(value),
                            })
                        }
                        None => {
                            self.error(
                                "invalid-mode",
                                format!("`{text}` is not a network mode"),
                                value.span,
                            )
                            .help = Some("use `none`, `allowlist` or `open`".into());
                        }
                    }
                }
                "allow" => doc.allow = self.rules("allow", value),
                "deny" => doc.deny = self.rules("deny", value),
                _ => unreachable!("mapping() returns known keys only"),
            }
        }
    }

    fn rules(&mut self, list: &str, node: &Node) -> Vec<Rule> {
        let items = self.list(list, node);
        let mut rules: Vec<Rule> = Vec::with_capacity(items.len());
        for item in items {
            if let Some(entry) = self.entry(list, item) {
                rules.push(Rule {
                    entry,
                    origin: self.origin(item),
                });
            }
        }
        // A hash of the entries seen (policies hold thousands), each with its first rule.
        let mut first: HashMap<&Entry, usize, RandomState> =
            HashMap::with_capacity_and_hasher(rules.len(), RandomState::default());
        let mut keep = vec![true; rules.len()];
        for (index, rule) in rules.iter().enumerate() {
            if let Some(&earlier) = first.get(&rule.entry) {
                let d = Diagnostic::warning(
                    "duplicate-entry",
                    format!("`{}` is listed twice in `{list}`", rule.entry),
                )
                .at(self.file, rule.origin.span)
                .related(self.file, rules[earlier].origin.span, "first here")
                .help("remove one of them");
                self.diagnostics.push(d);
                keep[index] = false;
            } else {
                first.insert(&rule.entry, index);
            }
        }
        drop(first);
        let mut keep = keep.into_iter();
        rules.retain(|_| keep.next().unwrap_or(true));
        rules
    }

    fn entry(&mut self, list: &str, node: &Node) -> Option<Entry> {
        match &node.kind {
            _ if node.is_null() => {
                self.error("empty-entry", format!("empty entry in `{list}`"), node.span)
                    .help = Some("remove the `-` or name a destination".into());
                None
            }
            Kind::Scalar { text, .. } => match entry::parse_short(text) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    self.entry_error(e, node);
                    None
                }
            },
            Kind::Map(_) => self.long_entry(list, node),
            Kind::Seq(_) => {
                self.type_error(&format!("{list}` entry `"), "a string or a mapping", node);
                None
            }
        }
    }

    fn long_entry(&mut self, list: &str, node: &Node) -> Option<Entry> {
        let what = format!("{list} entry");
        let fields = self.mapping(node, &what, ENTRY_KEYS);
        let mut target = None;
        let mut ports = None;
        let mut protocol = None;
        let mut ok = true;
        let mut targets_seen = Vec::new();
        for (key, value) in fields {
            match key {
                "host" | "ip" | "cidr" => {
                    targets_seen.push(key);
                    let Some(text) = self.string(key, value) else {
                        ok = false;
                        continue;
                    };
                    match long_target(key, text) {
                        Ok(t) => target = Some(t),
                        Err(e) => {
                            self.entry_error(e, value);
                            ok = false;
                        }
                    }
                }
                "ports" => match self.ports(value) {
                    Some(p) => ports = Some(p),
                    None => ok = false,
                },
                "protocol" => {
                    let Some(text) = self.string("protocol", value) else {
                        ok = false;
                        continue;
                    };
                    match Protocol::parse(text) {
                        Ok(p) => protocol = Some(p),
                        Err(e) => {
                            self.entry_error(e, value);
                            ok = false;
                        }
                    }
                }
                _ => unreachable!("mapping() returns known keys only"),
            }
        }
        if targets_seen.len() > 1 {
            self.error(
                "conflicting-target",
                format!(
                    "{what} has {}; give exactly one",
                    targets_seen.join(" and ")
                ),
                node.span,
            )
            .help = Some("split it into one entry per destination".into());
            return None;
        }
        if targets_seen.is_empty() {
            self.error(
                "missing-target",
                format!("{what} names no destination"),
                node.span,
            )
            .help = Some("add one of `host`, `ip` or `cidr`".into());
            return None;
        }
        let target = target.filter(|_| ok)?;
        let protocol = protocol.unwrap_or(match ports {
            Some(_) => Protocol::Tcp,
            None => Protocol::Any,
        });
        Some(Entry {
            target,
            ports: ports.unwrap_or(Ports::All),
            protocol,
        })
    }

    fn ports(&mut self, node: &Node) -> Option<Ports> {
        let Kind::Seq(items) = &node.kind else {
            self.type_error("ports", "a list", node);
            if let Some(text) = node.as_str() {
                self.diagnostics.last_mut().expect("just pushed").help =
                    Some(format!("write `ports: [{text}]`"));
            }
            return None;
        };
        if items.is_empty() {
            self.error("empty-ports", "`ports` is an empty list", node.span)
                .help = Some("remove `ports` to allow every port, or list at least one".into());
            return None;
        }
        let mut ranges = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let parsed = match &item.kind {
                Kind::Scalar { text, .. } if !item.is_null() => entry::parse_port_range(text),
                _ => {
                    self.type_error("ports", "a list of numbers or \"LOW-HIGH\" strings", item);
                    ok = false;
                    continue;
                }
            };
            match parsed {
                Ok(range) => ranges.push(range),
                Err(e) => {
                    self.entry_error(e, item);
                    ok = false;
                }
            }
        }
        ok.then(|| Ports::normalized(ranges))
    }

    fn dns(&mut self, node: &Node, doc: &mut Document) {
        for (key, value) in self.mapping(node, "dns", DNS_KEYS) {
            match key {
                "servers" => {
                    for item in self.list("servers", value) {
                        let Some(text) = self.string("servers", item) else {
                            continue;
                        };
                        match DnsServer::parse(text) {
                            Some(server) => doc.dns_servers.push(Sourced {
                                value: server,
                                origin: self.origin(item),
                            }),
                            None => {
                                self.error(
                                    "invalid-dns-server",
                                    format!("`{text}` is not a DNS server"),
                                    item.span,
                                )
                                .help = Some(
                                    "use `system`, an address (`192.0.2.53`, `2001:db8::53`) or \
                                     an address with a port (`192.0.2.53:5353`, `[2001:db8::53]:5353`)"
                                        .into(),
                                );
                            }
                        }
                    }
                }
                "timeout" => {
                    let range = Duration::from_millis(1)..=MAX_DNS_TIMEOUT;
                    doc.dns_timeout = self
                        .duration("timeout", value, range, "1ms-60s")
                        .map(|d| self.sourced(d, value));
                }
                "grace" => {
                    let range = Duration::ZERO..=MAX_DNS_GRACE;
                    doc.dns_grace = self
                        .duration("grace", value, range, "0s-10m")
                        .map(|d| self.sourced(d, value));
                }
                "attempts" => match value.as_str().map(str::parse::<u32>) {
                    Some(Ok(n @ 1..=MAX_DNS_ATTEMPTS)) => {
                        doc.dns_attempts = Some(self.sourced(n, value));
                    }
                    _ => {
                        let found = value.as_str().unwrap_or("this value").to_owned();
                        self.error(
                            "invalid-attempts",
                            format!("`attempts` must be a whole number from 1 to {MAX_DNS_ATTEMPTS}, found `{found}`"),
                            value.span,
                        );
                    }
                },
                "on_resolve_failure" => {
                    let Some(text) = self.string("on_resolve_failure", value) else {
                        continue;
                    };
                    match text {
                        "error" => {
                            doc.on_resolve_failure =
                                Some(self.sourced(OnResolveFailure::Error, value));
                        }
                        "warn" => {
                            doc.on_resolve_failure =
                                Some(self.sourced(OnResolveFailure::Warn, value));
                        }
                        _ => {
                            self.error(
                                "invalid-on-resolve-failure",
                                format!("`{text}` is not a choice for `on_resolve_failure`"),
                                value.span,
                            )
                            .help = Some("use `error` (the default) or `warn`".into());
                        }
                    }
                }
                _ => unreachable!("mapping() returns known keys only"),
            }
        }
    }
}

/// The destination of a long-form entry; each key takes exactly its own kind of value.
fn long_target(key: &str, text: &str) -> Result<entry::Target, EntryError> {
    let mismatch = |right: &str, code: &'static str| EntryError {
        code,
        message: format!("`{text}` is not a host name"),
        help: Some(format!("write `{right}: {text}`")),
    };
    match key {
        "host" => {
            if text.parse::<IpAddr>().is_ok() {
                return Err(mismatch("ip", "invalid-host"));
            }
            if text.contains('/') && entry::parse_net(text).is_ok() {
                return Err(mismatch("cidr", "invalid-host"));
            }
            if let Some((host, port)) = text.rsplit_once(':') {
                return Err(EntryError {
                    code: "invalid-host",
                    message: format!("`{text}`: `host` takes a name without a port"),
                    help: Some(format!("write `host: {host}` and `ports: [{port}]`")),
                });
            }
            entry::parse_name(text)
        }
        "ip" => match text.parse::<IpAddr>() {
            Ok(addr) => Ok(entry::Target::Addr(addr)),
            Err(_) if entry::parse_net(text).is_ok() => Err(EntryError {
                code: "invalid-address",
                message: format!("`{text}` is a CIDR block, not an address"),
                help: Some(format!("write `cidr: {text}`")),
            }),
            Err(_) => Err(EntryError {
                code: "invalid-address",
                message: format!("`{text}` is not an IP address"),
                help: Some("a host name goes in `host`; a port goes in `ports`".into()),
            }),
        },
        "cidr" => entry::parse_net(text).map(entry::Target::Net),
        _ => unreachable!("called for host, ip and cidr only"),
    }
}

impl DnsServer {
    fn parse(text: &str) -> Option<DnsServer> {
        if text == "system" {
            return Some(DnsServer::System);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(DnsServer::Addr(SocketAddr::new(ip, 53)));
        }
        text.parse::<SocketAddr>()
            .ok()
            .filter(|a| a.port() != 0)
            .map(DnsServer::Addr)
    }
}
