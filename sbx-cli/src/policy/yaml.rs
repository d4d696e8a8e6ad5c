//! A YAML document as a tree of nodes that remember where they stand in the source.
//!
//! saphyr-parser does the YAML 1.2 parsing; this module only builds the tree. We keep our own
//! tree rather than saphyr's loader because policy diagnostics need a span on every key and
//! value, and a duplicate key (two `allow:` blocks) must be reported, not silently overwritten.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};

use crate::diag::{Pos, Span};

/// A node of a document, borrowing its text from the source where it can (a policy of 10,000
/// entries is 10,000 scalars).
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub span: Span,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone)]
pub enum Kind<'a> {
    /// Scalars stay text: the policy stage decides what a value means. `plain` tells an
    /// unquoted `80` (a number) from a quoted `"80"` (a string), as the YAML core schema does.
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl Node<'_> {
    /// A plain `~`, `null` or empty value.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "an empty value",
            Kind::Scalar { plain: false, .. } => "a string",
            Kind::Scalar { text, .. } if text.parse::<i64>().is_ok() => "a number",
            Kind::Scalar { text, .. } if matches!(text.as_ref(), "true" | "false") => "a boolean",
            Kind::Scalar { .. } => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

#[derive(Debug)]
pub struct SyntaxError {
    pub message: String,
    pub at: Span,
}

/// A second occurrence of a key in one mapping.
#[derive(Debug)]
pub struct DuplicateKey {
    pub key: String,
    pub at: Span,
    pub first: Span,
}

#[derive(Debug)]
pub struct Document<'a> {
    /// `None` for an empty file.
    pub root: Option<Node<'a>>,
    pub duplicate_keys: Vec<DuplicateKey>,
}

pub fn parse(text: &str) -> Result<Document<'_>, SyntaxError> {
    let mut builder = Builder {
        events: Parser::new_from_str(text),
        lines: LineIndex::new(text),
        anchors: HashMap::new(),
        duplicate_keys: Vec::new(),
    };
    let root = builder.document()?;
    Ok(Document {
        root,
        duplicate_keys: builder.duplicate_keys,
    })
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    lines: LineIndex<'a>,
    anchors: HashMap<usize, Node<'a>>,
    duplicate_keys: Vec<DuplicateKey>,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.events.next() {
            Some(Ok((event, span))) => Ok((event, self.lines.span(span))),
            Some(Err(e)) => {
                let at = self.lines.pos(e.marker());
                Err(SyntaxError {
                    message: e.info().to_string(),
                    at: Span { start: at, end: at },
                })
            }
            None => {
                let end = self.lines.end();
                Err(SyntaxError {
                    message: "unexpected end of input".into(),
                    at: Span { start: end, end },
                })
            }
        }
    }

    fn document(&mut self) -> Result<Option<Node<'a>>, SyntaxError> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) if root.is_some() => {
                    return Err(SyntaxError {
                        message: "a policy file holds one YAML document; remove the second `---`"
                            .into(),
                        at: span,
                    });
                }
                Event::DocumentStart(_) => {
                    let (event, span) = self.next()?;
                    root = Some(self.node(event, span)?);
                }
                _ => unreachable!("saphyr-parser yields nodes only inside a document"),
            }
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node<'a>, SyntaxError> {
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str 80` is the string "80"; every other tag is left to the policy checks,
                // which see the text.
                let forced_string = tag.is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_string;
                let kind = Kind::Scalar { text, plain };
                (Node { span, kind }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let end = loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break span.end;
                    }
                    items.push(self.node(event, span)?);
                };
                let end = items.last().map_or(end, |n| n.span.end.max_by_offset(end));
                let span = Span {
                    start: span.start,
                    end,
                };
                (
                    Node {
                        span,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node<'a>, Node<'a>)> = Vec::new();
                let end = loop {
                    let (event, key_span) = self.next()?;
                    if matches!(event, Event::MappingEnd) {
                        break key_span.end;
                    }
                    let key = self.node(event, key_span)?;
                    let (event, value_span) = self.next()?;
                    let value = self.node(event, value_span)?;
                    if let Some(text) = key.as_str()
                        && let Some((first, _)) =
                            entries.iter().find(|(k, _)| k.as_str() == Some(text))
                    {
                        self.duplicate_keys.push(DuplicateKey {
                            key: text.to_string(),
                            at: key.span,
                            first: first.span,
                        });
                        continue;
                    }
                    entries.push((key, value));
                };
                let end = entries
                    .last()
                    .map_or(end, |(_, v)| v.span.end.max_by_offset(end));
                let span = Span {
                    start: span.start,
                    end,
                };
                (
                    Node {
                        span,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    message: "alias to an unknown anchor".into(),
                    at: span,
                })?;
                (node, 0)
            }
            other => {
                return Err(SyntaxError {
                    message: format!("unexpected YAML event {other:?}"),
                    at: span,
                });
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

impl Pos {
    fn max_by_offset(self, other: Pos) -> Pos {
        if other.offset > self.offset {
            other
        } else {
            self
        }
    }
}

/// Turns saphyr's markers (1-based line, 0-based column counted in characters) into byte offsets
/// and 1-based columns.
struct LineIndex<'a> {
    text: &'a str,
    /// Where each line starts; found when first needed (never, for positions in ASCII text).
    starts: std::cell::OnceCell<Vec<usize>>,
    /// Then a character index is a byte offset, and no line needs walking (policies are
    /// nearly always ASCII, and some have tens of thousands of entries).
    ascii: bool,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            starts: std::cell::OnceCell::new(),
            ascii: text.is_ascii(),
        }
    }

    fn starts(&self) -> &[usize] {
        self.starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        })
    }

    fn pos(&self, marker: &saphyr_parser::Marker) -> Pos {
        let line = marker.line().max(1);
        if self.ascii && marker.index() <= self.text.len() {
            return Pos {
                line: line as u32,
                column: marker.col() as u32 + 1,
                offset: marker.index(),
            };
        }
        let Some(&start) = self.starts().get(line - 1) else {
            return self.end();
        };
        let rest = &self.text[start..];
        let offset = start
            + rest
                .char_indices()
                .nth(marker.col())
                .map_or(rest.len(), |(i, _)| i);
        Pos {
            line: line as u32,
            column: marker.col() as u32 + 1,
            offset,
        }
    }

    fn span(&self, span: YamlSpan) -> Span {
        Span {
            start: self.pos(&span.start),
            end: self.pos(&span.end),
        }
    }

    fn end(&self) -> Pos {
        let starts = self.starts();
        let line = starts.len();
        let start = starts[line - 1];
        Pos {
            line: line as u32,
            column: self.text[start..].chars().count() as u32 + 1,
            offset: self.text.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values() {
        let doc = parse("version: 1\nnetwork:\n  mode: none\n").unwrap();
        let Kind::Map(top) = doc.root.unwrap().kind else {
            panic!("expected a mapping")
        };
        let (key, value) = &top[1];
        assert_eq!(key.as_str(), Some("network"));
        assert_eq!((key.span.start.line, key.span.start.column), (2, 1));
        let Kind::Map(network) = &value.kind else {
            panic!("expected a mapping")
        };
        let (_, mode) = &network[0];
        assert_eq!((mode.span.start.line, mode.span.start.column), (3, 9));
        assert_eq!(
            mode.span.start.offset,
            "version: 1\nnetwork:\n  mode: ".len()
        );
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_kept() {
        let doc = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(doc.duplicate_keys.len(), 1);
        assert_eq!(doc.duplicate_keys[0].key, "a");
        assert_eq!(doc.duplicate_keys[0].at.start.line, 3);
        assert_eq!(doc.duplicate_keys[0].first.start.line, 1);
        let Kind::Map(top) = doc.root.unwrap().kind else {
            panic!()
        };
        assert_eq!(top[0].1.as_str(), Some("1"));
    }

    #[test]
    fn quoting_is_kept() {
        let doc = parse("- 80\n- \"80\"\n- !!str 80\n").unwrap();
        let Kind::Seq(items) = doc.root.unwrap().kind else {
            panic!()
        };
        let plain: Vec<bool> = items
            .iter()
            .map(|n| matches!(n.kind, Kind::Scalar { plain, .. } if plain))
            .collect();
        assert_eq!(plain, [true, false, false]);
    }

    #[test]
    fn ascii_positions_with_crlf_line_ends() {
        let text = "a: 1\r\nb:\r\n  - x\r\n";
        let doc = parse(text).unwrap();
        let Kind::Map(top) = doc.root.unwrap().kind else {
            panic!()
        };
        let Kind::Seq(items) = &top[1].1.kind else {
            panic!()
        };
        let start = items[0].span.start;
        assert_eq!((start.line, start.column), (3, 5));
        assert_eq!(start.offset, text.find('x').unwrap());
    }

    #[test]
    fn columns_count_characters_and_offsets_bytes() {
        let doc = parse("é: x\n").unwrap();
        let Kind::Map(top) = doc.root.unwrap().kind else {
            panic!()
        };
        assert_eq!(top[0].1.span.start.column, 4);
        assert_eq!(top[0].1.span.start.offset, 4);
    }

    #[test]
    fn syntax_errors_have_a_position_and_two_documents_are_refused() {
        let err = parse("a: [1, 2\n").unwrap_err();
        assert!(err.at.start.line >= 1, "{err:?}");
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.at.start.line, 2);
    }

    #[test]
    fn empty_input_has_no_root_and_aliases_resolve() {
        assert!(parse("").unwrap().root.is_none());
        assert!(parse("# only a comment\n").unwrap().root.is_none());
        let doc = parse("a: &x [1]\nb: *x\n").unwrap();
        let Kind::Map(top) = doc.root.unwrap().kind else {
            panic!()
        };
        assert!(matches!(&top[1].1.kind, Kind::Seq(items) if items.len() == 1));
    }
}
