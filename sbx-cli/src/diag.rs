//! Problems found in policy files and how they are shown: rustc-style with the source line and a
//! caret on a terminal, or one JSON array for CI bots and review tools.

use std::io;

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use serde::Serialize;
use termcolor::WriteColor;

/// A position in a source file: 1-based line and column (in characters) and a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

/// A file whose text diagnostics can quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(usize);

/// Every file read during one run, by the name the user knows it by.
#[derive(Default)]
pub struct Sources {
    files: SimpleFiles<String, String>,
    names: Vec<String>,
}

impl Sources {
    pub fn add(&mut self, name: String, text: String) -> FileId {
        self.names.push(name.clone());
        FileId(self.files.add(name, text))
    }

    pub fn name(&self, file: FileId) -> &str {
        &self.names[file.0]
    }

    pub fn text(&self, file: FileId) -> &str {
        self.files
            .get(file.0)
            .expect("FileId comes from this Sources")
            .source()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: FileId,
    /// `None` when the problem is with the file as a whole (it cannot be read, say).
    pub span: Option<Span>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable, kebab-case name for the kind of problem (`unknown-key`, `invalid-port`, …).
    pub code: &'static str,
    pub message: String,
    pub location: Option<Location>,
    /// Short text shown under the caret.
    pub label: Option<String>,
    /// Other places that explain the problem (the first of two duplicate keys, say).
    pub related: Vec<(Location, String)>,
    pub help: Option<String>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message.into())
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message.into())
    }

    fn new(severity: Severity, code: &'static str, message: String) -> Self {
        Self {
            severity,
            code,
            message,
            location: None,
            label: None,
            related: Vec::new(),
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn at(mut self, file: FileId, span: Span) -> Self {
        self.location = Some(Location {
            file,
            span: Some(span),
        });
        self
    }

    pub fn in_file(mut self, file: FileId) -> Self {
        self.location = Some(Location { file, span: None });
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn related(mut self, file: FileId, span: Span, label: impl Into<String>) -> Self {
        let location = Location {
            file,
            span: Some(span),
        };
        self.related.push((location, label.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn help_opt(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Writes diagnostics as rustc does: header, `--> file:line:column`, the source line, a caret.
pub fn render_human(
    out: &mut dyn WriteColor,
    sources: &Sources,
    diagnostics: &[Diagnostic],
) -> io::Result<()> {
    let config = term::Config {
        chars: term::Chars::ascii(),
        ..term::Config::default()
    };
    for d in diagnostics {
        let report = to_report(sources, d);
        term::emit_to_write_style(out, &config, &sources.files, &report)
            .map_err(io::Error::other)?;
    }
    Ok(())
}

fn to_report(sources: &Sources, d: &Diagnostic) -> Report<usize> {
    let mut report = match d.severity {
        Severity::Error => Report::error(),
        Severity::Warning => Report::warning(),
    }
    .with_code(d.code);
    let mut message = d.message.clone();
    let mut labels = Vec::new();
    match &d.location {
        Some(Location {
            file,
            span: Some(span),
        }) => {
            let label = Label::primary(file.0, span.start.offset..span.end.offset);
            labels.push(match &d.label {
                Some(text) => label.with_message(text),
                None => label,
            });
        }
        // Nothing to quote: name the file in the header instead.
        Some(Location { file, span: None }) => {
            message = format!("{}: {message}", sources.name(*file));
        }
        None => {}
    }
    for (location, text) in &d.related {
        if let Some(span) = location.span {
            labels.push(
                Label::secondary(location.file.0, span.start.offset..span.end.offset)
                    .with_message(text),
            );
        }
    }
    let mut notes: Vec<String> = d.notes.iter().map(|n| format!("note: {n}")).collect();
    if let Some(help) = &d.help {
        notes.push(format!("help: {help}"));
    }
    report = report.with_message(message).with_labels(labels);
    report.with_notes(notes)
}

/// `file:line:column: code: message`, for places that list problems one per line.
pub fn one_line(sources: &Sources, d: &Diagnostic) -> String {
    let place = match &d.location {
        Some(Location {
            file,
            span: Some(span),
        }) => format!(
            "{}:{}:{}: ",
            sources.name(*file),
            span.start.line,
            span.start.column
        ),
        Some(Location { file, span: None }) => format!("{}: ", sources.name(*file)),
        None => String::new(),
    };
    format!("{place}{}: {}", d.code, d.message)
}

/// One diagnostic as `sbx check --format json` prints it.
#[derive(Serialize)]
pub struct JsonDiagnostic<'a> {
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub end_line: Option<u32>,
    pub end_column: Option<u32>,
    pub severity: Severity,
    pub code: &'a str,
    pub message: &'a str,
    pub help: Option<&'a str>,
    pub notes: &'a [String],
}

pub fn to_json<'a>(sources: &'a Sources, d: &'a Diagnostic) -> JsonDiagnostic<'a> {
    let file = d.location.as_ref().map(|l| sources.name(l.file));
    let span = d.location.as_ref().and_then(|l| l.span);
    JsonDiagnostic {
        file,
        line: span.map(|s| s.start.line),
        column: span.map(|s| s.start.column),
        end_line: span.map(|s| s.end.line),
        end_column: span.map(|s| s.end.column),
        severity: d.severity,
        code: d.code,
        message: &d.message,
        help: d.help.as_deref(),
        notes: &d.notes,
    }
}
