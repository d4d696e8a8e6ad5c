//! Block-style YAML from a small typed tree, for the manifests `sbx export` writes.
//!
//! No YAML serializer is a dependency (sbx parses YAML with saphyr-parser, which only reads), and
//! a manifest needs only maps, lists, strings, integers and comments. Every string is written
//! double-quoted with JSON escapes, which YAML reads back as the same string: no value (`"on"`,
//! `"0123"`, a name starting with `*`) can change type or meaning on the way.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Str(String),
    Int(i64),
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    /// A `#` line among a list's items; it carries no data.
    Comment(String),
}

pub fn str(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Node)>) -> Node {
    Node::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// `node` as a YAML document's body (no `---`), ending with a newline.
pub fn render(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(pairs) => render_map(&mut out, pairs, 0, None),
        Node::Seq(items) => render_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn scalar_text(node: &Node) -> String {
    match node {
        Node::Str(s) => serde_json::Value::String(s.clone()).to_string(),
        Node::Int(n) => n.to_string(),
        Node::Map(pairs) if pairs.is_empty() => "{}".into(),
        Node::Seq(items) if items.is_empty() => "[]".into(),
        _ => unreachable!("only scalars and empty collections are written inline"),
    }
}

fn is_inline(node: &Node) -> bool {
    match node {
        Node::Str(_) | Node::Int(_) => true,
        Node::Map(pairs) => pairs.is_empty(),
        Node::Seq(items) => items.iter().all(|i| matches!(i, Node::Comment(_))),
        Node::Comment(_) => false,
    }
}

/// Label keys such as `k8s:k8s-app` are legal plain keys, but quoting everything beyond the
/// plainest characters keeps every reader (and every reviewer) from having to know that.
fn key_text(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        key.to_string()
    } else {
        serde_json::Value::String(key.to_string()).to_string()
    }
}

/// `first` replaces the indentation of the first line: a map that is a list item starts on the
/// `- ` line.
fn render_map(out: &mut String, pairs: &[(String, Node)], indent: usize, first: Option<&str>) {
    let pad = " ".repeat(indent);
    for (i, (key, value)) in pairs.iter().enumerate() {
        let lead = match (i, first) {
            (0, Some(prefix)) => prefix,
            _ => pad.as_str(),
        };
        let key = key_text(key);
        match value {
            Node::Comment(text) => {
                let _ = writeln!(out, "{lead}# {text}");
            }
            v if is_inline(v) => {
                let v = match v {
                    Node::Seq(_) => "[]".to_string(),
                    other => scalar_text(other),
                };
                let _ = writeln!(out, "{lead}{key}: {v}");
            }
            Node::Map(inner) => {
                let _ = writeln!(out, "{lead}{key}:");
                render_map(out, inner, indent + 2, None);
            }
            Node::Seq(items) => {
                let _ = writeln!(out, "{lead}{key}:");
                render_seq(out, items, indent);
            }
            Node::Str(_) | Node::Int(_) => unreachable!("scalars are inline"),
        }
    }
}

fn render_seq(out: &mut String, items: &[Node], indent: usize) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Node::Comment(text) => {
                let _ = writeln!(out, "{pad}# {text}");
            }
            Node::Map(pairs) if !pairs.is_empty() => {
                render_map(out, pairs, indent + 2, Some(&format!("{pad}- ")));
            }
            Node::Seq(inner) if !is_inline(item) => {
                let _ = writeln!(out, "{pad}-");
                render_seq(out, inner, indent + 2);
            }
            scalar => {
                let _ = writeln!(out, "{pad}- {}", scalar_text(scalar));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_maps_start_on_the_dash_line_and_strings_are_quoted() {
        let doc = map([
            ("kind", str("CiliumNetworkPolicy")),
            (
                "egress",
                Node::Seq(vec![
                    Node::Comment("from a.yaml:3:7".into()),
                    map([
                        (
                            "toFQDNs",
                            Node::Seq(vec![map([("matchPattern", str("**.x.com"))])]),
                        ),
                        ("endPort", Node::Int(8100)),
                    ]),
                ]),
            ),
            ("matchLabels", map([("k8s:k8s-app", str("kube-dns"))])),
            ("empty", map::<String>([])),
            ("none", Node::Seq(vec![])),
        ]);
        assert_eq!(
            render(&doc),
            "kind: \"CiliumNetworkPolicy\"\n\
             egress:\n\
             # from a.yaml:3:7\n\
             - toFQDNs:\n  \
             - matchPattern: \"**.x.com\"\n  \
             endPort: 8100\n\
             matchLabels:\n  \
             \"k8s:k8s-app\": \"kube-dns\"\n\
             empty: {}\n\
             none: []\n"
        );
    }

    #[test]
    fn strings_that_yaml_would_retype_stay_strings() {
        let doc = map([("a", str("on")), ("b", str("0123")), ("c", str("a\"b\n"))]);
        assert_eq!(render(&doc), "a: \"on\"\nb: \"0123\"\nc: \"a\\\"b\\n\"\n");
    }
}
