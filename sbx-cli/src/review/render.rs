//! The three views of `sbx diff`: for a terminal (coloured `+`/`-`), Markdown for a pull-request
//! comment, JSON for tools.

use std::io::{self, Write};

use serde::Serialize;
use termcolor::{Color, ColorSpec, WriteColor};

use super::diff::{Change, PolicyDiff, Sign, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal: one line per change, `+` added, `-` removed, `~` changed.
    Human,
    /// For a pull-request comment: a summary and a `diff` block per policy.
    Markdown,
    /// One JSON object: {widened, policies: [{path, status, widened, changes: […], notes}]}.
    Json,
}

fn status_text(d: &PolicyDiff) -> &'static str {
    match (d.status, d.widened) {
        (Status::Added, true) => "new policy, access widened",
        (Status::Added, false) => "new policy",
        (Status::Removed, _) => "policy removed",
        (Status::Changed, true) => "access widened",
        (Status::Changed, false) => "access changed, not widened",
        (Status::Unchanged, _) => "access unchanged",
    }
}

fn line(c: &Change) -> String {
    let mut text = format!("{} {:<6} {}", c.change.symbol(), c.key, c.value);
    if let Some(origin) = &c.origin {
        text.push_str(&format!("  ({origin})"));
    }
    match (&c.widened, c.widens) {
        (Some(part), _) => text.push_str(&format!("  widens: {part}")),
        (None, true) => text.push_str("  widens"),
        (None, false) => {}
    }
    text
}

/// The summary that closes every view.
pub fn summary(diffs: &[PolicyDiff]) -> String {
    let changed = diffs
        .iter()
        .filter(|d| d.status != Status::Unchanged)
        .count();
    let widened = diffs.iter().filter(|d| d.widened).count();
    let policies = super::plural(diffs.len(), "policy", "policies");
    match (diffs.len(), widened) {
        (0, _) => "no policy changed".to_string(),
        (_, 0) => format!("{policies} compared, {changed} changed: no access widened"),
        (_, w) => format!("{policies} compared, {changed} changed: access widened in {w}"),
    }
}

pub fn human(out: &mut dyn WriteColor, diffs: &[PolicyDiff]) -> io::Result<()> {
    for d in diffs {
        out.set_color(ColorSpec::new().set_bold(true))?;
        write!(out, "{}", d.path)?;
        out.reset()?;
        writeln!(out, ": {}", status_text(d))?;
        for c in &d.changes {
            let color = match c.change {
                Sign::Added => Color::Green,
                Sign::Removed => Color::Red,
                Sign::Changed => Color::Yellow,
            };
            out.set_color(ColorSpec::new().set_fg(Some(color)).set_bold(c.widens))?;
            write!(out, "  {}", line(c))?;
            out.reset()?;
            writeln!(out)?;
        }
        for note in &d.notes {
            writeln!(out, "  note: {note}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "{}", summary(diffs))
}

pub fn markdown(out: &mut dyn Write, diffs: &[PolicyDiff]) -> io::Result<()> {
    let widened = diffs.iter().any(|d| d.widened);
    let mark = if widened { "⚠️ " } else { "" };
    writeln!(out, "### {mark}sbx diff: {}\n", summary(diffs))?;
    for d in diffs {
        writeln!(out, "#### `{}`: {}\n", d.path, status_text(d))?;
        for note in &d.notes {
            writeln!(out, "> note: {note}\n")?;
        }
        if d.changes.is_empty() {
            continue;
        }
        // GitHub and GitLab colour a `diff` block's `+` and `-` lines; `!` marks a setting.
        writeln!(out, "```diff")?;
        for c in &d.changes {
            let text = line(c);
            match c.change {
                Sign::Changed => writeln!(out, "!{}", &text[1..])?,
                _ => writeln!(out, "{text}")?,
            }
        }
        writeln!(out, "```\n")?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Json<'a> {
    widened: bool,
    summary: String,
    policies: &'a [PolicyDiff],
}

pub fn json(out: &mut dyn Write, diffs: &[PolicyDiff]) -> io::Result<()> {
    let report = Json {
        widened: diffs.iter().any(|d| d.widened),
        summary: summary(diffs),
        policies: diffs,
    };
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}
