//! `sbx test`: expectations kept beside a policy, checked offline with `sbx explain`'s verdicts.
//!
//! `NAME.test.yaml` holds the tests of `NAME.yaml` (or of the file its `policy` key names):
//!
//! ```yaml
//! allow:            # each must be allowed, every port and protocol the case asks about
//!   - github.com:443
//! deny:             # each must be denied entirely
//!   - github.com:80
//!   - 169.254.169.254:80
//! ```

use std::path::{Path, PathBuf};

use super::explain::{self, Query, Reason, Verdict};
use crate::diag::{Diagnostic, FileId};
use crate::policy::yaml::{self, Kind, Node};
use crate::policy::{Loader, Policy, Rule};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub files: usize,
    pub cases: usize,
    pub failed: usize,
    /// Test files that could not be run (unreadable, malformed, or their policy has errors).
    pub broken: usize,
    /// Policies found in a searched directory with no test file.
    pub untested: Vec<PathBuf>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failed == 0 && self.broken == 0
    }
}

/// Runs the tests under `paths`: test files, policies (whose test file beside them is run), or
/// directories searched for both. Every problem and failure is a diagnostic in `loader`'s
/// sources.
pub fn run(paths: &[PathBuf], loader: &mut Loader) -> (Outcome, Vec<Diagnostic>) {
    let mut outcome = Outcome::default();
    let mut problems = Vec::new();
    let mut tests = Vec::new();
    for path in paths {
        if path.is_dir() {
            find(path, loader, &mut tests, &mut outcome.untested);
        } else if crate::policy::is_policy_test(path) {
            tests.push(path.clone());
        } else if let Some(test) = test_file_of(path) {
            tests.push(test);
        } else {
            outcome.broken += 1;
            problems.push(
                Diagnostic::error(
                    "no-tests",
                    format!("`{}`: no such policy test", test_path(path).display()),
                )
                .help("write the expectations of NAME.yaml into NAME.test.yaml beside it"),
            );
        }
    }
    tests.sort();
    tests.dedup();
    for test in &tests {
        outcome.files += 1;
        match run_file(test, loader, &mut problems) {
            Some((cases, failed)) => {
                outcome.cases += cases;
                outcome.failed += failed;
            }
            None => outcome.broken += 1,
        }
    }
    (outcome, problems)
}

/// `NAME.test.yaml` beside `NAME.yaml`.
pub(crate) fn test_path(policy: &Path) -> PathBuf {
    let stem = policy.file_stem().unwrap_or_default().to_string_lossy();
    policy.with_file_name(format!("{stem}.test.yaml"))
}

/// `NAME.test.yaml` or `NAME.test.yml` beside the policy, if there is one.
fn test_file_of(policy: &Path) -> Option<PathBuf> {
    let yaml = test_path(policy);
    let yml = yaml.with_extension("yml");
    [yaml, yml].into_iter().find(|p| p.is_file())
}

fn find(dir: &Path, loader: &mut Loader, tests: &mut Vec<PathBuf>, untested: &mut Vec<PathBuf>) {
    let walk = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    let mut policies = Vec::new();
    for entry in walk.filter_map(Result::ok) {
        let path = entry.into_path();
        if crate::policy::is_policy_test(&path) {
            tests.push(path);
        } else if crate::policy::is_policy_file(&path) {
            policies.push(path);
        }
    }
    for policy in policies {
        // A base file (no mode in its chain) is tested through the policies that extend it.
        let is_policy = loader.compose(&policy).is_some_and(|c| c.mode.is_some());
        if is_policy && test_file_of(&policy).is_none() {
            untested.push(policy);
        }
    }
}

/// Runs one test file: `(cases, failed)`, or `None` when it cannot be run.
fn run_file(
    path: &Path,
    loader: &mut Loader,
    problems: &mut Vec<Diagnostic>,
) -> Option<(usize, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(Diagnostic::error(
                "unreadable-file",
                format!("cannot read `{}`: {e}", path.display()),
            ));
            return None;
        }
    };
    let file = loader.sources.add(path.display().to_string(), text);
    let text = loader.sources.text(file).to_string();
    let doc = match yaml::parse(&text) {
        Ok(doc) => doc,
        Err(e) => {
            problems.push(Diagnostic::error("yaml-syntax", e.message).at(file, e.at));
            return None;
        }
    };
    let Some(Node {
        kind: Kind::Map(items),
        ..
    }) = &doc.root
    else {
        problems.push(
            Diagnostic::error("invalid-type", "a policy test is a mapping")
                .in_file(file)
                .help("write `allow:` and `deny:` lists of destinations"),
        );
        return None;
    };
    let mut policy_path = None;
    let mut cases: Vec<(Verdict, &Node)> = Vec::new();
    let mut ok = true;
    for (key, value) in items {
        match key.as_str() {
            Some("policy") => match value.as_str() {
                Some(p) if !value.is_null() => policy_path = Some(p.to_string()),
                _ => {
                    problems.push(
                        Diagnostic::error(
                            "invalid-type",
                            format!("`policy` is a path, found {}", value.describe()),
                        )
                        .at(file, value.span),
                    );
                    ok = false;
                }
            },
            Some(list @ ("allow" | "deny")) => {
                let verdict = if list == "allow" {
                    Verdict::Allowed
                } else {
                    Verdict::Denied
                };
                match &value.kind {
                    Kind::Seq(items) => cases.extend(items.iter().map(|n| (verdict, n))),
                    _ if value.is_null() => {}
                    _ => {
                        problems.push(
                            Diagnostic::error(
                                "invalid-type",
                                format!("`{list}` is a list, found {}", value.describe()),
                            )
                            .at(file, value.span),
                        );
                        ok = false;
                    }
                }
            }
            _ => {
                problems.push(
                    Diagnostic::error(
                        "unknown-key",
                        format!(
                            "unknown key `{}` in a policy test",
                            key.as_str().unwrap_or("?")
                        ),
                    )
                    .at(file, key.span)
                    .help("a policy test has `policy`, `allow` and `deny`"),
                );
                ok = false;
            }
        }
    }
    let target = match &policy_path {
        Some(p) => path.parent().unwrap_or(Path::new("")).join(p),
        None => policy_of(path),
    };
    let errors_before = loader.diagnostics().iter().filter(|d| d.is_error()).count();
    let policy = loader.load(&target);
    let Some(policy) = policy else {
        let new_errors = loader.diagnostics().iter().filter(|d| d.is_error()).count();
        if new_errors == errors_before {
            // Its errors were reported when another test loaded it; say which test it stops.
            problems.push(
                Diagnostic::error(
                    "test-policy-invalid",
                    format!("`{}` has errors, so its tests cannot run", target.display()),
                )
                .in_file(file),
            );
        }
        return None;
    };
    if cases.is_empty() {
        problems.push(
            Diagnostic::error("empty-test", "a policy test with no cases tests nothing")
                .in_file(file)
                .help("list destinations under `allow:` and `deny:`"),
        );
        ok = false;
    }
    let mut failed = 0;
    for (expected, node) in &cases {
        let Some(text) = node.as_str().filter(|_| !node.is_null()) else {
            problems.push(
                Diagnostic::error(
                    "invalid-case",
                    format!("a case is a destination, found {}", node.describe()),
                )
                .at(file, node.span)
                .help("write `DEST[:PORT][/PROTO]`, as in `github.com:443` or `10.0.0.1:53/udp`"),
            );
            ok = false;
            continue;
        };
        let query = match Query::parse(text) {
            Ok(q) => q,
            Err(why) => {
                problems.push(Diagnostic::error("invalid-case", why).at(file, node.span));
                ok = false;
                continue;
            }
        };
        if let Some(d) = judge(&policy, &query, *expected, file, node) {
            problems.push(d);
            failed += 1;
        }
    }
    ok.then_some((cases.len(), failed))
}

/// `NAME.test.yaml` tests `NAME.yaml`, or `NAME.yml` when only that exists.
fn policy_of(test: &Path) -> PathBuf {
    let stem = test.file_stem().unwrap_or_default().to_string_lossy();
    let name = stem.strip_suffix(".test").unwrap_or(&stem);
    let yaml = test.with_file_name(format!("{name}.yaml"));
    let yml = test.with_file_name(format!("{name}.yml"));
    if !yaml.exists() && yml.exists() {
        yml
    } else {
        yaml
    }
}

/// `None` when the case holds; else the failure, at the case, with the rule that decided.
fn judge(
    policy: &Policy,
    query: &Query,
    expected: Verdict,
    file: FileId,
    node: &Node,
) -> Option<Diagnostic> {
    let e = explain::explain(policy, query);
    if e.verdict == expected {
        return None;
    }
    let want = match expected {
        Verdict::Allowed => "allowed",
        _ => "denied",
    };
    let mut d = Diagnostic::error(
        "test-failed",
        format!(
            "`{query}` should be {want} by `{}`, but it is {}",
            policy.name,
            e.verdict.as_str()
        ),
    )
    .at(file, node.span)
    .label(format!("expected {want}"));
    let mut related: Vec<(&Rule, &str)> = Vec::new();
    match &e.reason {
        Reason::AllowedBy(rule) => related.push((rule, "allowed by this entry")),
        Reason::DeniedBy { deny, allow } | Reason::NameRefused { deny, allow } => {
            related.push((deny, "denied by this entry"));
            if let Some(allow) = allow {
                related.push((allow, "allowed here, but deny wins"));
            }
        }
        Reason::OtherPorts(rules) => {
            related.extend(
                rules
                    .iter()
                    .map(|r| (r, "names it, for other ports or protocols")),
            );
        }
        Reason::Open(origin) | Reason::ModeNone(origin) => {
            d = d.related(origin.file, origin.span, "the mode decides");
        }
        Reason::NotInAllowlist => d = d.note("not in the allowlist: no allow entry names it"),
        Reason::HostLoopback => {
            d = d.note("the host's loopback is reachable only through an entry that names it")
        }
    }
    for (rule, label) in related {
        d = d.related(rule.origin.file, rule.origin.span, label);
    }
    if e.verdict == Verdict::Partly {
        d = d.note(format!("allowed: {}", e.allowed));
    }
    for note in e.notes {
        d = d.note(note);
    }
    Some(d.help(format!(
        "`sbx explain {} {query}` shows why",
        policy_file(policy)
    )))
}

fn policy_file(policy: &Policy) -> &str {
    policy.files.last().map_or("POLICY", |f| f.as_ref())
}
