//! Reviewing policy changes: `sbx diff` (what access a change adds or removes, after `extends`),
//! `sbx explain` (the verdict for one destination and the rule that decides it) and `sbx test`
//! (expectations kept beside a policy). All of it works on composed policies, offline by
//! default: it compares what policies say, not what names resolve to. `sbx diff --resolve` and
//! `sbx explain --resolve` ask sbx's resolver (with each policy's own `dns` settings) for the
//! addresses of names as well. Nothing here reaches the backend or sandbox stages.

pub mod access;
pub mod diff;
pub mod explain;
mod git;
pub mod policy_tests;
pub mod render;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use termcolor::WriteColor;

use crate::diag::{self, Diagnostic};
use crate::policy::{Loader, Policy};
use crate::resolve::{self, Answers};
pub use diff::PolicyDiff;
pub use render::Format;

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Writes the errors `loaders` found (their warnings are `sbx check`'s business) and says
/// whether there were any.
fn report_errors(stderr: &mut dyn WriteColor, loaders: &[&Loader]) -> io::Result<bool> {
    report_errors_in(stderr, loaders, |_| true)
}

/// [`report_errors`], for the errors in the files `wanted` names (and those of no file).
fn report_errors_in(
    stderr: &mut dyn WriteColor,
    loaders: &[&Loader],
    wanted: impl Fn(&str) -> bool,
) -> io::Result<bool> {
    let mut any = false;
    for loader in loaders {
        let errors: Vec<Diagnostic> = loader
            .diagnostics()
            .iter()
            .filter(|d| d.is_error())
            .filter(|d| {
                d.location
                    .as_ref()
                    .is_none_or(|l| wanted(loader.sources.name(l.file)))
            })
            .cloned()
            .collect();
        diag::render_human(stderr, &loader.sources, &errors)?;
        any |= !errors.is_empty();
    }
    Ok(any)
}

/// What `policy`'s host names (and `extra`) resolve to now, with its own `dns` settings; an
/// absent policy has no names. `Err` when no resolver can be set up for its settings.
pub fn resolve_names(policy: Option<&Policy>, extra: Option<&str>) -> Result<Answers, String> {
    let Some(policy) = policy else {
        return Ok(Answers::new());
    };
    let mut names = policy.host_names();
    names.extend(extra.map(str::to_string));
    resolve::resolve_once(&policy.dns, names).map_err(|why| {
        format!(
            "cannot resolve the names of policy `{}`: {why}",
            policy.name
        )
    })
}

/// [`diff::diff`], each side's names resolved first when `resolve` is set.
fn diff_sides(
    path: String,
    old: Option<&Policy>,
    new: Option<&Policy>,
    resolve: bool,
) -> Result<PolicyDiff, String> {
    if !resolve {
        return Ok(diff::diff(path, old, new, None));
    }
    let (old_answers, new_answers) = (resolve_names(old, None)?, resolve_names(new, None)?);
    let resolution = diff::Resolution {
        old: &old_answers,
        new: &new_answers,
    };
    Ok(diff::diff(path, old, new, Some(resolution)))
}

/// `sbx diff OLD NEW`: two policy files. `Ok(None)` when one has errors (written to `stderr`);
/// `Err` when names were to be resolved and could not be.
pub fn diff_files(
    old: &Path,
    new: &Path,
    resolve: bool,
    stderr: &mut dyn WriteColor,
) -> io::Result<Result<Option<Vec<PolicyDiff>>, String>> {
    let (mut old_loader, mut new_loader) = (Loader::new(), Loader::new());
    let old_policy = old_loader.load(old);
    let new_policy = new_loader.load(new);
    if report_errors(stderr, &[&old_loader, &new_loader])? {
        return Ok(Ok(None));
    }
    let path = if old == new {
        new.display().to_string()
    } else {
        format!("{} → {}", old.display(), new.display())
    };
    Ok(diff_sides(path, old_policy.as_ref(), new_policy.as_ref(), resolve).map(|d| Some(vec![d])))
}

/// `sbx diff --git SPEC [PATHS]`: every policy below `paths` (relative to `cwd`; the whole
/// repository when empty) that changed between the two revisions of `spec`, or whose `extends`
/// chain did. `Err` for a git problem, or names that could not be resolved; `Ok(None)` when a
/// policy has errors (written).
pub fn diff_git(
    cwd: &Path,
    spec: &str,
    paths: &[PathBuf],
    resolve: bool,
    stderr: &mut dyn WriteColor,
) -> io::Result<Result<Option<Vec<PolicyDiff>>, String>> {
    let sides = || -> Result<_, String> {
        let repo = PathBuf::from(git::git(cwd, &["rev-parse", "--show-toplevel"])?.trim());
        let prefix = git::git(cwd, &["rev-parse", "--show-prefix"])?;
        let prefix = Path::new(prefix.trim());
        let (old_rev, new_rev) = git::revisions(&repo, spec)?;
        let old = git::Side::commit(&repo, &old_rev)?;
        let new = match new_rev {
            Some(rev) => git::Side::commit(&repo, &rev)?,
            None => git::Side::worktree(&repo),
        };
        let rels: Vec<PathBuf> = if paths.is_empty() {
            vec![prefix.to_path_buf()]
        } else {
            paths.iter().map(|p| prefix.join(p)).collect()
        };
        Ok((old, new, rels))
    };
    let (old, new, rels) = match sides() {
        Ok(sides) => sides,
        Err(e) => return Ok(Err(e)),
    };
    let candidates: BTreeSet<String> = rels
        .iter()
        .flat_map(|rel| {
            let mut files = old.policy_files(rel);
            files.extend(new.policy_files(rel));
            files
        })
        .collect();
    let (mut old_loader, mut new_loader) = (Loader::new(), Loader::new());
    let mut found = Vec::new();
    // The files of the policies compared, as each side shows them: errors elsewhere (an
    // unchanged policy, a YAML file that is no policy) are not this comparison's.
    let mut shown: BTreeSet<String> = BTreeSet::new();
    for rel in &candidates {
        let compose = |loader: &mut Loader, side: &git::Side| {
            side.text(rel)?;
            loader.compose_as(&side.root.join(rel), format!("{}{rel}", side.label))
        };
        let old_composed = compose(&mut old_loader, &old);
        let new_composed = compose(&mut new_loader, &new);
        // Every file either version of the policy is made of, by its path in the repository.
        let files: BTreeSet<String> = [(&old_composed, &old), (&new_composed, &new)]
            .into_iter()
            .flat_map(|(composed, side)| {
                composed.iter().flat_map(|c| {
                    c.files
                        .iter()
                        .map(|f| f.strip_prefix(side.label.as_str()).unwrap_or(f).to_string())
                })
            })
            .collect();
        if files.iter().all(|f| old.text(f) == new.text(f)) {
            continue;
        }
        for side in [&old, &new] {
            shown.insert(format!("{}{rel}", side.label));
            shown.extend(files.iter().map(|f| format!("{}{f}", side.label)));
        }
        let as_policy = |c: Option<crate::policy::Composed>| c.and_then(|c| c.into_policy());
        found.push((rel, as_policy(old_composed), as_policy(new_composed)));
    }
    if report_errors_in(stderr, &[&old_loader, &new_loader], |f| shown.contains(f))? {
        return Ok(Ok(None));
    }
    let diffs = found
        .into_iter()
        .filter(|(_, old, new)| old.is_some() || new.is_some())
        .map(|(rel, old, new): (_, Option<Policy>, Option<Policy>)| {
            diff_sides(rel.clone(), old.as_ref(), new.as_ref(), resolve)
        })
        .collect::<Result<Vec<_>, String>>();
    Ok(diffs.map(Some))
}

/// `sbx explain`: the policy at `path`, or `None` when it has errors (written to `stderr`).
pub fn load_policy(path: &Path, stderr: &mut dyn WriteColor) -> io::Result<Option<Policy>> {
    let mut loader = Loader::new();
    let policy = loader.load(path);
    if report_errors(stderr, &[&loader])? {
        return Ok(None);
    }
    Ok(policy)
}

/// `sbx test`: runs the tests, writes failures and problems rustc-style and a summary line to
/// `stderr`, and returns the outcome.
pub fn test(paths: &[PathBuf], stderr: &mut dyn WriteColor) -> io::Result<policy_tests::Outcome> {
    let mut loader = Loader::new();
    let (outcome, problems) = policy_tests::run(paths, &mut loader);
    report_errors(stderr, &[&loader])?;
    diag::render_human(stderr, &loader.sources, &problems)?;
    for policy in &outcome.untested {
        writeln!(
            stderr,
            "warning: `{}` has no tests: write its expectations into `{}`",
            policy.display(),
            policy_tests::test_path(policy).display()
        )?;
    }
    let mut summary = format!(
        "tested {}: {} passed, {} failed",
        plural(outcome.files, "file", "files"),
        outcome.cases - outcome.failed,
        outcome.failed
    );
    if outcome.broken > 0 {
        summary.push_str(&format!(
            ", {} could not run",
            plural(outcome.broken, "file", "files")
        ));
    }
    if !outcome.untested.is_empty() {
        summary.push_str(&format!(
            ", {} without tests",
            plural(outcome.untested.len(), "policy", "policies")
        ));
    }
    writeln!(stderr, "{summary}")?;
    Ok(outcome)
}
