//! `extends`: files are loaded depth-first, each extended file before the file that extends it;
//! lists are concatenated and de-duplicated (the first occurrence keeps its provenance), scalars
//! of later files override earlier ones.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::document::{self, Document};
use super::{Dns, DnsServer, Mode, OnResolveFailure, Policy, Rule, Sourced, lint};
use crate::diag::{Diagnostic, FileId, Sources};

/// Reads policy files, each once, and composes them. Diagnostics of a file are recorded the
/// first time it is read, so a base file extended by ten policies is reported once.
#[derive(Default)]
pub struct Loader {
    pub sources: Sources,
    files: HashMap<PathBuf, Arc<Loaded>>,
    extended: HashSet<PathBuf>,
    diagnostics: Vec<Diagnostic>,
}

struct Loaded {
    file: FileId,
    path: Arc<str>,
    dir: PathBuf,
    doc: Document,
}

/// A policy after `extends`, possibly without a mode: a base file meant only to be extended.
#[derive(Debug, Clone)]
pub struct Composed {
    pub name: String,
    pub description: Option<String>,
    pub mode: Option<Sourced<Mode>>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub dns_servers: Vec<Sourced<DnsServer>>,
    pub dns_timeout: Option<Sourced<Duration>>,
    pub dns_grace: Option<Sourced<Duration>>,
    pub dns_attempts: Option<Sourced<u32>>,
    pub on_resolve_failure: Option<Sourced<OnResolveFailure>>,
    pub files: Vec<Arc<str>>,
    /// The applied file, for problems of the policy as a whole.
    pub file: FileId,
    file_ids: Vec<FileId>,
}

impl Loader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every problem found so far, errors and warnings, each once.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    fn push(&mut self, d: Diagnostic) {
        if !self.diagnostics.contains(&d) {
            self.diagnostics.push(d);
        }
    }

    /// Whether `file` has an error of its own (its other problems may follow from it).
    pub fn has_errors_in(&self, file: FileId) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.is_error() && d.location.as_ref().is_some_and(|l| l.file == file))
    }

    /// Whether some file read so far extends `path`.
    pub fn is_extended(&self, path: &Path) -> bool {
        std::fs::canonicalize(path).is_ok_and(|p| self.extended.contains(&p))
    }

    /// Loads `path` and what it extends, records every problem, runs the lints, and returns the
    /// composition unless `path` itself could not be read.
    pub fn compose(&mut self, path: &Path) -> Option<Composed> {
        self.compose_as(path, path.display().to_string())
    }

    /// [`Loader::compose`], with `path` and the files it extends shown under `display` and
    /// relative to it: a policy read out of a commit is shown by its path in the repository.
    pub fn compose_as(&mut self, path: &Path, display: String) -> Option<Composed> {
        let canonical = match std::fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) => {
                self.push(Diagnostic::error(
                    "unreadable-file",
                    format!("cannot read `{display}`: {}", io_reason(&e)),
                ));
                return None;
            }
        };
        let top = self.load_file(&canonical, display)?;
        let mut composed = Composed {
            name: top
                .doc
                .name
                .clone()
                .unwrap_or_else(|| file_stem(&canonical)),
            description: top.doc.description.clone(),
            mode: None,
            allow: Vec::new(),
            deny: Vec::new(),
            dns_servers: Vec::new(),
            dns_timeout: None,
            dns_grace: None,
            dns_attempts: None,
            on_resolve_failure: None,
            files: Vec::new(),
            file: top.file,
            file_ids: Vec::new(),
        };
        let mut chain = Vec::new();
        self.merge(&canonical, top, &mut chain, &mut composed);
        self.check_mode(&composed);
        // Warnings about a policy that lost entries to errors would be guesses.
        if !composed.file_ids.iter().any(|&f| self.has_errors_in(f)) {
            for d in lint::lint(&composed) {
                self.push(d);
            }
        }
        Some(composed)
    }

    /// Loads and composes `path` for use: a mode is required and no file may have an error.
    pub fn load(&mut self, path: &Path) -> Option<Policy> {
        self.load_as(path, path.display().to_string())
    }

    /// [`Loader::load`], shown as [`Loader::compose_as`] shows it.
    pub fn load_as(&mut self, path: &Path, display: String) -> Option<Policy> {
        let composed = self.compose_as(path, display)?;
        if composed.mode.is_none() && !self.has_errors_in(composed.file) {
            self.push(missing_mode(&composed));
        }
        if self.has_errors() {
            return None;
        }
        composed.into_policy()
    }

    fn load_file(&mut self, canonical: &Path, display: String) -> Option<Arc<Loaded>> {
        if let Some(loaded) = self.files.get(canonical) {
            return Some(loaded.clone());
        }
        let text = match std::fs::read_to_string(canonical) {
            Ok(text) => text,
            Err(e) => {
                self.push(Diagnostic::error(
                    "unreadable-file",
                    format!("cannot read `{display}`: {}", io_reason(&e)),
                ));
                return None;
            }
        };
        let path: Arc<str> = Arc::from(display.as_str());
        let file = self.sources.add(display, text);
        let mut diagnostics = Vec::new();
        let doc = document::parse(file, &path, self.source_text(file), &mut diagnostics);
        for d in diagnostics {
            self.push(d);
        }
        let loaded = Arc::new(Loaded {
            file,
            path,
            dir: canonical
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            doc,
        });
        self.files.insert(canonical.to_path_buf(), loaded.clone());
        Some(loaded)
    }

    fn source_text(&self, file: FileId) -> &str {
        self.sources.text(file)
    }

    fn merge(
        &mut self,
        canonical: &Path,
        loaded: Arc<Loaded>,
        chain: &mut Vec<(PathBuf, Arc<str>)>,
        into: &mut Composed,
    ) {
        chain.push((canonical.to_path_buf(), loaded.path.clone()));
        for parent in &loaded.doc.extends {
            let target = loaded.dir.join(&parent.value);
            let display = display_join(&loaded.path, &parent.value);
            let shown_chain = || {
                chain
                    .iter()
                    .map(|(_, p)| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(" extends ")
            };
            let parent_canonical = match std::fs::canonicalize(&target) {
                Ok(p) => p,
                Err(e) => {
                    let d = Diagnostic::error(
                        "extends-missing",
                        format!(
                            "cannot read extended file `{}`: {}",
                            parent.value,
                            io_reason(&e)
                        ),
                    )
                    .at(parent.origin.file, parent.origin.span)
                    .label(format!("resolved to `{display}`"))
                    .note(format!("while loading {}", shown_chain()))
                    .help("paths in `extends` are relative to the file that names them");
                    self.push(d);
                    continue;
                }
            };
            self.extended.insert(parent_canonical.clone());
            if let Some(start) = chain.iter().position(|(p, _)| *p == parent_canonical) {
                let cycle: Vec<String> = chain[start..]
                    .iter()
                    .map(|(_, p)| format!("`{p}`"))
                    .chain(std::iter::once(format!("`{display}`")))
                    .collect();
                let d = Diagnostic::error(
                    "extends-cycle",
                    format!("`extends` cycle: {}", cycle.join(" → ")),
                )
                .at(parent.origin.file, parent.origin.span)
                .help("remove one of the `extends` entries that form the cycle");
                self.push(d);
                continue;
            }
            let Some(parent_loaded) = self.load_file(&parent_canonical, display) else {
                continue;
            };
            self.merge(&parent_canonical, parent_loaded, chain, into);
        }
        chain.pop();
        let doc = &loaded.doc;
        if !into.file_ids.contains(&loaded.file) {
            into.file_ids.push(loaded.file);
            into.files.push(loaded.path.clone());
        }
        if let Some(mode) = &doc.mode {
            into.mode = Some(mode.clone());
        }
        append_rules(&mut into.allow, &doc.allow);
        append_rules(&mut into.deny, &doc.deny);
        append_unique(&mut into.dns_servers, &doc.dns_servers, |s| &s.value);
        // A later file's scalar wins, with its origin.
        fn later<T: Clone>(into: &mut Option<Sourced<T>>, doc: &Option<Sourced<T>>) {
            if doc.is_some() {
                into.clone_from(doc);
            }
        }
        later(&mut into.dns_timeout, &doc.dns_timeout);
        later(&mut into.dns_grace, &doc.dns_grace);
        later(&mut into.dns_attempts, &doc.dns_attempts);
        later(&mut into.on_resolve_failure, &doc.on_resolve_failure);
    }

    /// `allow` only means something in allowlist mode; elsewhere it would be silently ignored.
    /// A wildcard in `deny` is enforced by sbx's DNS service, which `mode: open` does not run:
    /// refused there rather than ignored.
    fn check_mode(&mut self, composed: &Composed) {
        if let Some(mode) = composed.mode.as_ref().filter(|m| m.value == Mode::Open) {
            let wildcard = composed
                .deny
                .iter()
                .find(|r| matches!(r.entry.target, super::entry::Target::Wildcard(_)));
            if let Some(rule) = wildcard {
                let d = Diagnostic::error(
                    "deny-wildcard-in-open",
                    format!(
                        "`{}` would deny nothing in `mode: open`: wildcards are enforced by sbx's \
                         DNS service, which only `mode: allowlist` runs",
                        rule.entry
                    ),
                )
                .at(rule.origin.file, rule.origin.span)
                .related(
                    mode.origin.file,
                    mode.origin.span,
                    "mode set to `open` here",
                )
                .help(
                    "set `mode: allowlist` and list what the command may reach, or deny the \
                     names (resolved when the sandbox starts) or addresses you mean",
                );
                self.push(d);
            }
        }
        let (Some(mode), Some(first)) = (&composed.mode, composed.allow.first()) else {
            return;
        };
        if mode.value == Mode::Allowlist {
            return;
        }
        let d = Diagnostic::error(
            "allow-without-allowlist",
            format!("`allow` has no effect in `mode: {}`", mode.value.as_str()),
        )
        .at(first.origin.file, first.origin.span)
        .related(
            mode.origin.file,
            mode.origin.span,
            format!("mode set to `{}` here", mode.value.as_str()),
        )
        .help(match mode.value {
            Mode::None => "remove `allow`, or set `mode: allowlist`",
            _ => "in `mode: open` everything but `deny` is reachable: remove `allow`, or set `mode: allowlist`",
        });
        self.push(d);
    }
}

/// The error for a policy that is applied but has no mode anywhere in its `extends` chain.
pub fn missing_mode(composed: &Composed) -> Diagnostic {
    Diagnostic::error(
        "missing-mode",
        format!(
            "policy `{}` sets no `network.mode`, and no file it extends does",
            composed.name
        ),
    )
    .in_file(composed.file)
    .help(
        "add `network: {mode: allowlist}` (or `none`, `open`); a file meant only to be extended \
         may leave it out, and is then checked together with a file that extends it",
    )
}

impl Composed {
    pub fn into_policy(self) -> Option<Policy> {
        let mut dns = Dns::default();
        if !self.dns_servers.is_empty() {
            (dns.servers, dns.origins.servers) = self
                .dns_servers
                .into_iter()
                .map(|s| (s.value, s.origin))
                .unzip();
        }
        if let Some(timeout) = self.dns_timeout {
            (dns.timeout, dns.origins.timeout) = (timeout.value, Some(timeout.origin));
        }
        if let Some(grace) = self.dns_grace {
            (dns.grace, dns.origins.grace) = (grace.value, Some(grace.origin));
        }
        if let Some(attempts) = self.dns_attempts {
            (dns.attempts, dns.origins.attempts) = (attempts.value, Some(attempts.origin));
        }
        if let Some(on_failure) = self.on_resolve_failure {
            (dns.on_resolve_failure, dns.origins.on_resolve_failure) =
                (on_failure.value, Some(on_failure.origin));
        }
        Some(Policy {
            name: self.name,
            description: self.description,
            mode: self.mode?,
            allow: self.allow,
            deny: self.deny,
            dns,
            files: self.files,
        })
    }
}

/// `append_unique` for rules, which a document holds without duplicates already (see
/// `document`): the first document's need no hashing.
fn append_rules(into: &mut Vec<Rule>, from: &[Rule]) {
    if into.is_empty() {
        into.extend_from_slice(from);
    } else {
        append_unique(into, from, |r| &r.entry);
    }
}

fn append_unique<T: Clone, K: Eq + std::hash::Hash>(
    into: &mut Vec<T>,
    from: &[T],
    key: impl Fn(&T) -> &K,
) {
    if from.is_empty() {
        return;
    }
    let mut seen: HashSet<&K, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(into.len() + from.len(), Default::default());
    seen.extend(into.iter().map(&key));
    let fresh: Vec<T> = from
        .iter()
        .filter(|item| seen.insert(key(item)))
        .cloned()
        .collect();
    into.extend(fresh);
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The path of an extended file as the user would write it: relative to the extending file's
/// path as shown, with `.` and `..` folded where possible.
fn display_join(base: &str, relative: &str) -> String {
    let joined = Path::new(base)
        .parent()
        .unwrap_or(Path::new(""))
        .join(relative);
    let mut parts: Vec<std::path::Component> = Vec::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if matches!(parts.last(), Some(std::path::Component::Normal(_))) =>
            {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.iter().collect::<PathBuf>().display().to_string()
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::display_join;

    #[test]
    fn extended_paths_are_shown_relative_to_the_extending_file() {
        assert_eq!(
            display_join("policies/a.yaml", "base/b.yaml"),
            "policies/base/b.yaml"
        );
        assert_eq!(
            display_join("policies/x/a.yaml", "../b.yaml"),
            "policies/b.yaml"
        );
        assert_eq!(display_join("a.yaml", "./b.yaml"), "b.yaml");
    }
}
