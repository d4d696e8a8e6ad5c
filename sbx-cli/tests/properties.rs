//! Property tests of the policy parser: formatting a valid entry and parsing it back gives the
//! same entry; no input makes the parser panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use sbx::diag::Sources;
use sbx::policy::{Entry, PortRange, Ports, Protocol, Target};

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn host_name() -> impl Strategy<Value = String> {
    // The last label has a letter: an all-digit top-level label would read as an address.
    (prop::collection::vec(label(), 0..4), "[a-z][a-z0-9]{0,8}").prop_map(|(mut labels, tld)| {
        labels.push(tld);
        labels.join(".")
    })
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        host_name().prop_map(Target::Host),
        (label(), host_name()).prop_map(|(l, h)| Target::Wildcard(format!("{l}.{h}"))),
        any::<Ipv4Addr>().prop_map(|a| Target::Addr(IpAddr::V4(a))),
        any::<Ipv6Addr>().prop_map(|a| Target::Addr(IpAddr::V6(a))),
        (any::<Ipv4Addr>(), 0u8..=32)
            .prop_map(|(a, len)| Target::Net(IpNet::new(a.into(), len).unwrap().trunc())),
        (any::<Ipv6Addr>(), 0u8..=128)
            .prop_map(|(a, len)| Target::Net(IpNet::new(a.into(), len).unwrap().trunc())),
    ]
}

fn ports() -> impl Strategy<Value = Ports> {
    prop_oneof![
        Just(Ports::All),
        prop::collection::vec((1u16..=65535, 0u16..200), 1..5).prop_map(|ranges| {
            Ports::normalized(
                ranges
                    .into_iter()
                    .map(|(first, len)| PortRange {
                        first,
                        last: first.saturating_add(len),
                    })
                    .collect(),
            )
        }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        target(),
        ports(),
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Any)
        ],
    )
        .prop_map(|(target, ports, protocol)| Entry {
            target,
            ports,
            protocol,
        })
}

/// Parses `entry` as the single allow entry of a policy, through the whole Policy stage.
fn parse_entry(entry_yaml: &str) -> Result<Entry, String> {
    let text = format!("version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - {entry_yaml}\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    let mut loader = sbx::policy::Loader::new();
    let policy = loader
        .load(&path)
        .ok_or_else(|| format!("{:?}", loader.diagnostics()))?;
    Ok(policy.allow[0].entry.clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn formatting_then_parsing_gives_the_same_entry(entry in entry()) {
        let yaml = entry.to_yaml();
        prop_assert_eq!(parse_entry(&yaml), Ok(entry), "{}", yaml);
    }

    #[test]
    fn the_short_form_parser_never_panics(text in "\\PC{0,40}") {
        let _ = sbx::policy::entry::parse_short(&text);
    }

    #[test]
    fn short_form_lookalikes_never_panic(text in "[\\[\\]0-9a-f:./*?#-]{0,40}") {
        let _ = sbx::policy::entry::parse_short(&text);
    }

    #[test]
    fn the_policy_parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        parse_document(&text);
    }

    #[test]
    fn the_policy_parser_never_panics_on_yaml_shaped_text(
        lines in prop::collection::vec("( {0,4})(- )?([a-z_]{1,10}|\"[^\"]{0,10}\"|[\\[\\]{}*&!]{1,3})(: )?([a-z0-9.:/\\[\\]{}*-]{0,15})", 0..12)
    ) {
        parse_document(&lines.join("\n"));
    }
}

fn parse_document(text: &str) {
    let mut sources = Sources::default();
    let path: std::sync::Arc<str> = "fuzz.yaml".into();
    let file = sources.add(path.to_string(), text.to_string());
    let mut diagnostics = Vec::new();
    sbx::policy::parse_document(file, &path, text, &mut diagnostics);
}
