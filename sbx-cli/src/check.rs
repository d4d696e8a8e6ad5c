//! `sbx check`: every problem in every policy file, in one run.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use termcolor::WriteColor;

use crate::diag::{self, Diagnostic};
use crate::policy::{Loader, missing_mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// rustc-style messages with the source line, on stderr.
    Human,
    /// One JSON array of {file, line, column, severity, code, message, …} on stdout.
    Json,
}

pub struct Outcome {
    pub errors: usize,
    pub warnings: usize,
}

/// Checks `paths` (files, or directories searched for `*.yaml` / `*.yml`).
pub fn check(paths: &[PathBuf]) -> (Loader, Vec<Diagnostic>, usize) {
    let mut loader = Loader::new();
    let mut extra = Vec::new();
    let files = policy_files(paths, &mut extra);
    let mut fragments = Vec::new();
    for file in &files {
        if let Some(composed) = loader.compose(file)
            && composed.mode.is_none()
        {
            fragments.push((file, composed));
        }
    }
    // A file without a mode is fine when something extends it: it is a base, not a policy. One
    // that has errors already may have lost its mode to them.
    for (file, composed) in fragments {
        if !loader.is_extended(file) && !loader.has_errors_in(composed.file) {
            extra.push(missing_mode(&composed));
        }
    }
    let mut diagnostics: Vec<Diagnostic> = loader.diagnostics().to_vec();
    diagnostics.extend(extra);
    diagnostics.sort_by_cached_key(|d| {
        let file = d
            .location
            .as_ref()
            .map(|l| loader.sources.name(l.file).to_owned());
        let pos = d
            .location
            .as_ref()
            .and_then(|l| l.span)
            .map(|s| s.start.offset);
        (file, pos)
    });
    (loader, diagnostics, files.len())
}

pub fn report(
    paths: &[PathBuf],
    format: Format,
    stderr: &mut dyn WriteColor,
    stdout: &mut dyn Write,
) -> io::Result<Outcome> {
    let (loader, diagnostics, checked) = check(paths);
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let outcome = Outcome {
        errors,
        warnings: diagnostics.len() - errors,
    };
    match format {
        Format::Human => {
            diag::render_human(stderr, &loader.sources, &diagnostics)?;
            let files = plural(checked, "file");
            let summary = match (outcome.errors, outcome.warnings) {
                (0, 0) => format!("checked {files}: no problems"),
                (e, w) => format!(
                    "checked {files}: {}, {}",
                    plural(e, "error"),
                    plural(w, "warning")
                ),
            };
            writeln!(stderr, "{summary}")?;
        }
        Format::Json => {
            let json: Vec<_> = diagnostics
                .iter()
                .map(|d| diag::to_json(&loader.sources, d))
                .collect();
            let mut out = io::BufWriter::new(stdout);
            serde_json::to_writer_pretty(&mut out, &json)?;
            writeln!(out)?;
            out.flush()?;
        }
    }
    Ok(outcome)
}

pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Named files as given; directories searched recursively for `*.yaml` and `*.yml`, skipping
/// hidden directories (`.git`, `.github`: their YAML is not policy). Sorted, so output is stable.
fn policy_files(paths: &[PathBuf], problems: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            if !path.exists() {
                problems.push(Diagnostic::error(
                    "unreadable-file",
                    format!("`{}`: no such file or directory", path.display()),
                ));
            } else {
                files.push(path.clone());
            }
            continue;
        }
        let before = files.len();
        let walk = walkdir::WalkDir::new(path)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !is_hidden(e.path()));
        for entry in walk {
            match entry {
                Ok(e) if e.file_type().is_file() && crate::policy::is_policy_file(e.path()) => {
                    files.push(e.into_path())
                }
                Ok(_) => {}
                Err(e) => problems.push(Diagnostic::error(
                    "unreadable-file",
                    format!("cannot read `{}`: {e}", path.display()),
                )),
            }
        }
        if files.len() == before {
            problems.push(
                Diagnostic::error(
                    "no-policy-files",
                    format!("no `*.yaml` or `*.yml` files in `{}`", path.display()),
                )
                .help("point `sbx check` at your policy files or the directory that holds them"),
            );
        }
    }
    files.dedup();
    files
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
