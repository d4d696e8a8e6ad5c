//! docs/examples: the shell steps of the policy-review workflow and the entries of the
//! pre-commit hooks, read out of the files as they are and run with the real sbx (first on
//! PATH) in a temporary git repository holding a copy of policies/, so that the examples cannot
//! rot. No root, no network.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Dir, yaml_as_json};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> Value {
    let path = repo_root().join("docs/examples").join(name);
    yaml_as_json(&std::fs::read_to_string(&path).unwrap())
}

/// PATH with the sbx under test first, as the examples call it by name.
fn path_with_sbx() -> OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_sbx")).parent().unwrap();
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.test"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A git repository on branch `main` with a copy of this repository's policies/, committed.
fn policy_repo() -> Dir {
    let dir = Dir::new();
    copy_dir(&repo_root().join("policies"), &dir.path().join("policies"));
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "policies"]);
    dir
}

fn append(dir: &Dir, file: &str, text: &str) {
    let path = dir.path().join(file);
    let mut content = std::fs::read_to_string(&path).unwrap();
    content.push_str(text);
    std::fs::write(&path, content).unwrap();
}

/// A finished step: exit code, stdout, stderr, and what it wrote to `$GITHUB_OUTPUT`.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    outputs: String,
}

/// The workflow's steps by name.
fn workflow_steps() -> BTreeMap<String, Value> {
    let workflow = example("policy-review.yml");
    workflow["jobs"]["review"]["steps"]
        .as_array()
        .expect("jobs.review.steps")
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s.clone())))
        .collect()
}

/// Runs a step's `run` script as GitHub Actions does (`bash -e -o pipefail`) in `cwd`. Each
/// variable of the step's `env` takes its value from `values`, by name: expressions are
/// GitHub's to evaluate, and the script itself must hold none.
fn run_step(step: &Value, cwd: &Path, values: &[(&str, &str)]) -> Ran {
    let script = step["run"].as_str().expect("a run step");
    assert!(
        !script.contains("${{"),
        "expressions belong in the step's env, not in its script: {script}"
    );
    let outputs = cwd.join("github-output");
    std::fs::write(&outputs, "").unwrap();
    let mut command = Command::new("bash");
    command
        .args([
            "--noprofile",
            "--norc",
            "-e",
            "-o",
            "pipefail",
            "-c",
            script,
        ])
        .current_dir(cwd)
        .env("PATH", path_with_sbx())
        .env("NO_COLOR", "1")
        .env("GITHUB_OUTPUT", &outputs);
    if let Some(env) = step["env"].as_object() {
        for key in env.keys() {
            let value = values
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("no value given for the step's env {key}"));
            command.env(key, value.1);
        }
    }
    let out = command.output().unwrap();
    Ran {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        outputs: std::fs::read_to_string(&outputs).unwrap(),
    }
}

#[test]
fn the_workflow_steps_check_test_and_diff_against_the_base_branch() {
    let steps = workflow_steps();
    let step = |name: &str| {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no step `{name}` in the workflow"))
    };
    let dir = policy_repo();
    let base = [("BASE_REF", "main")];

    // Without the variable that says where sbx comes from, the install step says so.
    let ran = run_step(
        step("Install sbx"),
        dir.path(),
        &[("SBX_GIT_URL", ""), ("SBX_GIT_REV", "")],
    );
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains("::error::set the repository variable SBX_GIT_URL"),
        "{}",
        ran.stdout
    );

    // As actions/checkout leaves a pull request: the base branch as origin/main.
    git(
        dir.path(),
        &["update-ref", "refs/remotes/origin/main", "HEAD"],
    );
    git(dir.path(), &["checkout", "-q", "-b", "widen"]);
    append(&dir, "policies/npm-build.yaml", "    - example.org:443\n");
    git(dir.path(), &["commit", "-q", "-am", "widen"]);
    for name in ["Check", "Test"] {
        let ran = run_step(step(name), dir.path(), &[]);
        assert_eq!(ran.code, 0, "{name}: {}{}", ran.stdout, ran.stderr);
    }
    let ran = run_step(step("Diff against the base branch"), dir.path(), &base);
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.outputs, "status=1\n");
    let markdown = std::fs::read_to_string(dir.path().join("diff.md")).unwrap();
    assert!(
        markdown.starts_with("### ⚠️ sbx diff: 1 policy compared, 1 changed: access widened in 1"),
        "{markdown}"
    );
    assert!(
        markdown.contains("+ allow  example.org:443  (HEAD:policies/npm-build.yaml:9:7)  widens"),
        "{markdown}"
    );
    assert_eq!(ran.stdout, markdown, "the markdown is in the log too");
    let fail = step("Fail when access widened");
    assert_eq!(fail["if"], "steps.diff.outputs.status == '1'");
    assert_eq!(run_step(fail, dir.path(), &[]).code, 1);

    // A narrowing change: the job passes.
    git(dir.path(), &["checkout", "-q", "-b", "narrow", "main"]);
    append(
        &dir,
        "policies/base/no-cloud-metadata.yaml",
        "    - 192.0.2.53\n",
    );
    git(dir.path(), &["commit", "-q", "-am", "narrow"]);
    let ran = run_step(step("Diff against the base branch"), dir.path(), &base);
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.outputs, "status=0\n");
    let markdown = std::fs::read_to_string(dir.path().join("diff.md")).unwrap();
    assert!(
        markdown.contains("changed: no access widened"),
        "{markdown}"
    );

    // A policy that does not load fails the check, and the diff step with sbx's status 2.
    git(dir.path(), &["checkout", "-q", "-b", "broken", "main"]);
    let path = dir.path().join("policies/npm-build.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("mode: allowlist", "mode: sometimes")).unwrap();
    git(dir.path(), &["commit", "-q", "-am", "broken"]);
    assert_eq!(run_step(step("Check"), dir.path(), &[]).code, 1);
    let ran = run_step(step("Diff against the base branch"), dir.path(), &base);
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("policies/npm-build.yaml"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.outputs, "");
}

/// Each hook's entry, run as pre-commit runs a `system` hook with `pass_filenames: false`.
fn hooks() -> BTreeMap<String, String> {
    let config = example("pre-commit-config.yaml");
    let repos = config["repos"].as_array().expect("repos");
    assert_eq!(repos.len(), 1);
    assert_eq!(repos[0]["repo"], "local");
    repos[0]["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|h| {
            assert_eq!(h["language"], "system", "{h}");
            assert_eq!(h["pass_filenames"], false, "{h}");
            (
                h["id"].as_str().unwrap().to_string(),
                h["entry"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn run_hook(entry: &str, cwd: &Path) -> (i32, String) {
    let out = Command::new("sh")
        .args(["-c", entry])
        .current_dir(cwd)
        .env("PATH", path_with_sbx())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        format!(
            "{}{}",
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap()
        ),
    )
}

#[test]
fn the_pre_commit_hooks_check_test_and_show_the_staged_change() {
    let hooks = hooks();
    let hook = |id: &str| {
        hooks
            .get(id)
            .unwrap_or_else(|| panic!("no hook `{id}`"))
            .as_str()
    };

    // Before the first commit there is nothing to compare with, and the diff hook passes.
    let dir = Dir::new();
    copy_dir(&repo_root().join("policies"), &dir.path().join("policies"));
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "."]);
    let (code, out) = run_hook(hook("sbx-diff"), dir.path());
    assert_eq!(code, 0, "{out}");
    git(dir.path(), &["commit", "-q", "-m", "policies"]);

    // A staged widening: checked, tested, shown, and not refused.
    append(&dir, "policies/npm-build.yaml", "    - example.org:443\n");
    git(dir.path(), &["add", "."]);
    for id in ["sbx-check", "sbx-test"] {
        let (code, out) = run_hook(hook(id), dir.path());
        assert_eq!(code, 0, "{id}: {out}");
    }
    let (code, out) = run_hook(hook("sbx-diff"), dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("+ allow  example.org:443  (policies/npm-build.yaml:9:7)  widens"),
        "{out}"
    );

    // A policy that does not load: every hook fails.
    let path = dir.path().join("policies/npm-build.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("mode: allowlist", "mode: sometimes")).unwrap();
    for id in ["sbx-check", "sbx-test", "sbx-diff"] {
        let (code, out) = run_hook(hook(id), dir.path());
        assert_ne!(code, 0, "{id}: {out}");
    }
}
