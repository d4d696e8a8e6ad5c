//! Host names, and the one rule that says whether a policy's name pattern covers a name.
//!
//! The policy parser builds its names here, and sbx's DNS service judges every question here
//! too, from the question's labels as they came on the wire: what `sbx check` accepts, what
//! `sbx plan` lists and what the DNS service answers are decided by the same code.
//!
//! A host name is a sequence of labels of 1–63 letters, digits and `-`, not starting or ending
//! with `-` (RFC 1123), at most 253 characters written with dots (255 octets on the wire), whose
//! last label is not all digits. Nothing else is a host name: not a label holding a `.` (which
//! the wire allows, and which text shows as `\.`), nor `_`, `*`, a NUL or any other byte, nor
//! the root name. Letters are compared without case; a name is kept in lower case.

use std::fmt;

/// A host name: lower case, labels joined by `.`, no trailing dot. Since no label holds a `.`,
/// the text splits back into exactly the labels it was made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

/// Why a name is not a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// No labels (the root name, or empty text).
    Empty,
    /// Longer than [`HostName::MAX_LEN`] characters written with dots.
    TooLong(usize),
    /// `a..b`: text only (a wire label is never empty).
    EmptyLabel,
    LabelTooLong {
        label: String,
        len: usize,
    },
    /// A byte that is not a letter, a digit or `-`.
    Character {
        byte: u8,
    },
    /// A label that starts or ends with `-`.
    Hyphen {
        label: String,
    },
    /// The last label is all digits (`10.0.0.256`): neither an address nor a name.
    NumericLast,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("it is empty"),
            NameError::TooLong(len) => write!(
                f,
                "it is {len} characters long, the limit is {}",
                HostName::MAX_LEN
            ),
            NameError::EmptyLabel => f.write_str("it has an empty label (`..`)"),
            NameError::LabelTooLong { label, len } => write!(
                f,
                "the label `{label}` is {len} characters long, the limit is 63"
            ),
            NameError::Character { byte } if byte.is_ascii_graphic() || *byte == b' ' => {
                write!(f, "`{}` is not allowed in a host name", char::from(*byte))
            }
            NameError::Character { byte } => {
                write!(f, "the byte {byte:#04x} is not allowed in a host name")
            }
            NameError::Hyphen { label } => {
                write!(f, "the label `{label}` starts or ends with `-`")
            }
            NameError::NumericLast => f.write_str("its last label is all digits"),
        }
    }
}

/// Whether `label` is a host-name label: 1–63 letters, digits and `-`, not starting or ending
/// with `-`.
fn check_label(label: &[u8]) -> Result<(), NameError> {
    let text = || String::from_utf8_lossy(label).into_owned();
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > 63 {
        return Err(NameError::LabelTooLong {
            label: text(),
            len: label.len(),
        });
    }
    if let Some(&byte) = label
        .iter()
        .find(|b| !b.is_ascii_alphanumeric() && **b != b'-')
    {
        return Err(NameError::Character { byte });
    }
    if label.starts_with(b"-") || label.ends_with(b"-") {
        return Err(NameError::Hyphen { label: text() });
    }
    Ok(())
}

impl HostName {
    /// The longest host name, written with dots and without the trailing one (255 octets on
    /// the wire).
    pub const MAX_LEN: usize = 253;

    /// A name as written in a policy: labels separated by `.`, one trailing `.` accepted.
    pub fn parse(text: &str) -> Result<HostName, NameError> {
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > HostName::MAX_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        HostName::from_labels(name.split('.').map(str::as_bytes))
    }

    /// A name from its labels as they are on the wire (the root label left out), each judged
    /// as it is: a label that holds a `.` is refused, never split.
    pub fn from_labels<'a>(
        labels: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<HostName, NameError> {
        let mut text = String::new();
        let mut last: &[u8] = &[];
        for label in labels {
            check_label(label)?;
            if !text.is_empty() {
                text.push('.');
            }
            // Letters, digits and `-` only (checked above): ASCII, so one char per byte.
            text.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
            if text.len() > HostName::MAX_LEN {
                return Err(NameError::TooLong(text.len()));
            }
            last = label;
        }
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if last.iter().all(u8::is_ascii_digit) {
            return Err(NameError::NumericLast);
        }
        Ok(HostName(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The labels, in order (none holds a `.`).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a name pattern of the policy (a host name, or `*.` and one, in the canonical form the
/// parser gives) covers `name`: an exact name is equal to it; `*.suffix` covers every name
/// strictly below `suffix`, at any depth, not `suffix` itself. This is the rule sbx's DNS
/// service applies to every question.
pub fn pattern_matches(pattern: &str, name: &HostName) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => is_strictly_below(name.as_str(), suffix),
        None => pattern == name.as_str(),
    }
}

/// `a.b.example.com` is strictly below `example.com`; `example.com` and `badexample.com` are not.
/// Both are canonical host names, whose labels hold no `.`, so a `.` in the text is always a
/// boundary between labels.
pub fn is_strictly_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

/// A name as it came on the wire, written so that every name has one text and the text shows
/// exactly what was asked: labels joined by `.`, a `.` or `\` inside a label escaped with `\`,
/// and every byte that is not printable ASCII as `\DDD` (decimal, as in zone files). For
/// reports of refused names, which must not carry control characters to a terminal.
pub fn escaped<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut text = String::new();
    for (i, label) in labels.into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        for &b in label {
            match b {
                b'.' | b'\\' => {
                    text.push('\\');
                    text.push(char::from(b));
                }
                0x21..=0x7e => text.push(char::from(b)),
                _ => text.push_str(&format!("\\{b:03}")),
            }
        }
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(labels: &[&[u8]]) -> Result<HostName, NameError> {
        HostName::from_labels(labels.iter().copied())
    }

    fn name(text: &str) -> HostName {
        HostName::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn text_and_wire_give_the_same_name() {
        assert_eq!(
            wire(&[b"API", b"Example", b"COM"]).unwrap(),
            name("api.example.com")
        );
        assert_eq!(name("Api.Example.Com.").as_str(), "api.example.com");
        assert_eq!(
            name("a-b.x1.example.com").labels().collect::<Vec<_>>(),
            ["a-b", "x1", "example", "com"]
        );
        assert_eq!(name("localhost").as_str(), "localhost");
    }

    #[test]
    fn a_label_holding_a_dot_is_not_a_host_name() {
        // `x.evil\.allowed.test`: three labels, the second `evil.allowed`.
        assert_eq!(
            wire(&[b"x", b"evil.allowed", b"test"]),
            Err(NameError::Character { byte: b'.' })
        );
    }

    #[test]
    fn only_letters_digits_and_hyphens() {
        for bad in [
            &b"under_score"[..],
            b"*",
            b"a\0b",
            b"sp ace",
            b"caf\xc3\xa9",
            b"a/b",
            b"a\\b",
            b"\x1b[31m",
        ] {
            assert!(
                matches!(
                    wire(&[bad, b"example", b"com"]),
                    Err(NameError::Character { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            wire(&[b"-a", b"example", b"com"]),
            Err(NameError::Hyphen { .. })
        ));
        assert!(matches!(
            wire(&[b"a-", b"example", b"com"]),
            Err(NameError::Hyphen { .. })
        ));
        assert_eq!(wire(&[]), Err(NameError::Empty));
        assert_eq!(HostName::parse("."), Err(NameError::Empty));
        assert_eq!(HostName::parse("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(HostName::parse("a.b.."), Err(NameError::EmptyLabel));
        assert_eq!(HostName::parse("10.0.0.256"), Err(NameError::NumericLast));
        assert!(matches!(
            wire(&[&[b'a'; 64], b"com"]),
            Err(NameError::LabelTooLong { len: 64, .. })
        ));
    }

    #[test]
    fn at_most_253_characters_255_octets_on_the_wire() {
        // 63 + 63 + 63 + 61 and three dots: 253, the longest (255 octets on the wire).
        let longest = [&[b'a'; 63][..], &[b'b'; 63], &[b'c'; 63], &[b'd'; 61]];
        assert_eq!(wire(&longest).unwrap().as_str().len(), 253);
        let too_long = [&[b'a'; 63][..], &[b'b'; 63], &[b'c'; 63], &[b'd'; 62]];
        assert_eq!(wire(&too_long), Err(NameError::TooLong(254)));
        let text = String::from_utf8(vec![b'a'; 254]).unwrap();
        assert_eq!(HostName::parse(&text), Err(NameError::TooLong(254)));
    }

    #[test]
    fn patterns() {
        let matches = |pattern: &str, text: &str| pattern_matches(pattern, &name(text));
        assert!(matches("*.allowed.test", "x.allowed.test"));
        assert!(matches("*.allowed.test", "A.B.Allowed.TEST."));
        assert!(!matches("*.allowed.test", "allowed.test"));
        assert!(!matches("*.allowed.test", "badallowed.test"));
        assert!(!matches("*.allowed.test", "allowed.test.evil"));
        assert!(matches("allowed.test", "ALLOWED.test."));
        assert!(!matches("allowed.test", "x.allowed.test"));
        // What the DNS service is asked on the wire decides, never its text form.
        let escaped_dot = wire(&[b"x", b"evil.allowed", b"test"]);
        assert!(escaped_dot.is_err());
    }

    #[test]
    fn escaped_text_shows_every_byte() {
        assert_eq!(
            escaped([&b"x"[..], b"evil.allowed", b"test"]),
            "x.evil\\.allowed.test"
        );
        assert_eq!(escaped([&b"a\0b"[..], b"c\\d"]), "a\\000b.c\\\\d");
        assert_eq!(escaped([&b"\x1b[31m"[..]]), "\\027[31m");
        assert_eq!(escaped([&b"sp ace"[..]]), "sp\\032ace");
        assert_eq!(escaped(std::iter::empty::<&[u8]>()), ".");
    }
}
