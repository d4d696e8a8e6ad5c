//! Composition through `extends`: order, override, de-duplication, provenance, cycles.

mod common;

use common::Dir;
use sbx::policy::{DnsServer, Loader, Mode, OnResolveFailure, Policy};

fn load(dir: &Dir, file: &str) -> Result<Policy, Vec<String>> {
    let mut loader = Loader::new();
    let path = dir.path().join(file);
    let policy = loader.load(&path);
    let problems: Vec<String> = loader
        .diagnostics()
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    policy.ok_or(problems)
}

fn entries(rules: &[sbx::policy::Rule]) -> Vec<String> {
    rules.iter().map(|r| r.entry.to_string()).collect()
}

/// `path:line` of each rule, with the temporary directory cut off.
fn provenance(dir: &Dir, rules: &[sbx::policy::Rule]) -> Vec<String> {
    let prefix = format!("{}/", dir.path().display());
    rules
        .iter()
        .map(|r| {
            let origin = r.origin.to_string();
            let origin = origin.strip_prefix(&prefix).unwrap_or(&origin).to_string();
            origin.rsplit_once(':').unwrap().0.to_string()
        })
        .collect()
}

#[test]
fn extended_files_come_first_lists_concatenate_and_duplicates_keep_the_first_origin() {
    let dir = Dir::new();
    dir.write(
        "base/meta.yaml",
        "version: 1\nnetwork:\n  deny:\n    - 169.254.169.254\n    - fd00:ec2::254\n",
    );
    dir.write("base/registry.yaml", "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - crates.io:443\n  deny:\n    - 169.254.169.254\n");
    dir.write(
        "ci.yaml",
        "version: 1\nextends:\n  - base/meta.yaml\n  - base/registry.yaml\nnetwork:\n  allow:\n    - github.com:443\n    - crates.io:443\n  deny:\n    - 192.0.2.1\n",
    );
    let p = load(&dir, "ci.yaml").unwrap();
    assert_eq!(p.mode.value, Mode::Allowlist);
    assert_eq!(entries(&p.allow), ["crates.io:443", "github.com:443"]);
    assert_eq!(
        provenance(&dir, &p.allow),
        ["base/registry.yaml:5", "ci.yaml:7"]
    );
    assert_eq!(
        entries(&p.deny),
        ["169.254.169.254", "fd00:ec2::254", "192.0.2.1"]
    );
    assert_eq!(
        provenance(&dir, &p.deny),
        ["base/meta.yaml:4", "base/meta.yaml:5", "ci.yaml:10"]
    );
    assert_eq!(
        p.name, "ci",
        "name defaults to the applied file's stem, not a base's"
    );
    assert_eq!(p.files.len(), 3);
}

#[test]
fn scalars_of_the_extending_file_override() {
    let dir = Dir::new();
    dir.write(
        "base.yaml",
        "version: 1\nname: base\nnetwork: {mode: none}\ndns:\n  servers: [192.0.2.53]\n  timeout: 5s\n  attempts: 4\n  on_resolve_failure: warn\n",
    );
    dir.write("p.yaml", "version: 1\nextends: [base.yaml]\nnetwork: {mode: open}\ndns:\n  servers: [\"192.0.2.54:5353\", 192.0.2.53]\n  timeout: 1s\n");
    let p = load(&dir, "p.yaml").unwrap();
    assert_eq!(p.mode.value, Mode::Open);
    assert!(
        p.mode.origin.to_string().ends_with("p.yaml:3:17"),
        "{}",
        p.mode.origin
    );
    assert_eq!(p.name, "p");
    assert_eq!(p.dns.timeout, std::time::Duration::from_secs(1));
    assert_eq!(p.dns.attempts, 4);
    assert_eq!(p.dns.on_resolve_failure, OnResolveFailure::Warn);
    assert_eq!(
        p.dns.servers,
        [
            DnsServer::Addr("192.0.2.53:53".parse().unwrap()),
            DnsServer::Addr("192.0.2.54:5353".parse().unwrap())
        ]
    );
}

#[test]
fn mode_may_come_from_an_extended_file_and_defaults_apply() {
    let dir = Dir::new();
    dir.write("base.yaml", "version: 1\nnetwork: {mode: allowlist}\n");
    dir.write(
        "p.yaml",
        "version: 1\nextends: [base.yaml]\nnetwork:\n  allow: [example.com]\n",
    );
    let p = load(&dir, "p.yaml").unwrap();
    assert_eq!(p.mode.value, Mode::Allowlist);
    assert_eq!(p.dns.servers, [DnsServer::System]);
    assert_eq!(p.dns.attempts, 2);
}

#[test]
fn allow_from_a_base_conflicts_with_a_mode_set_later() {
    let dir = Dir::new();
    dir.write(
        "base.yaml",
        "version: 1\nnetwork:\n  allow: [example.com]\n",
    );
    dir.write(
        "p.yaml",
        "version: 1\nextends: [base.yaml]\nnetwork: {mode: open}\n",
    );
    let problems = load(&dir, "p.yaml").unwrap_err();
    assert_eq!(
        problems,
        ["allow-without-allowlist: `allow` has no effect in `mode: open`"]
    );
}

#[test]
fn a_diamond_is_not_a_cycle() {
    let dir = Dir::new();
    dir.write("d.yaml", "version: 1\nnetwork:\n  deny: [192.0.2.1]\n");
    dir.write("b.yaml", "version: 1\nextends: [d.yaml]\n");
    dir.write("c.yaml", "version: 1\nextends: [d.yaml]\n");
    dir.write(
        "a.yaml",
        "version: 1\nextends: [b.yaml, c.yaml]\nnetwork: {mode: none}\n",
    );
    let p = load(&dir, "a.yaml").unwrap();
    assert_eq!(entries(&p.deny), ["192.0.2.1"]);
}

#[test]
fn cycles_and_missing_files_are_errors_with_the_chain() {
    let dir = Dir::new();
    dir.write(
        "self.yaml",
        "version: 1\nextends: [self.yaml]\nnetwork: {mode: none}\n",
    );
    let problems = load(&dir, "self.yaml").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("extends-cycle:"), "{problems:?}");

    dir.write(
        "a.yaml",
        "version: 1\nextends: [sub/b.yaml]\nnetwork: {mode: none}\n",
    );
    dir.write("sub/b.yaml", "version: 1\nextends: [../a.yaml]\n");
    let problems = load(&dir, "a.yaml").unwrap_err();
    assert_eq!(problems.len(), 1);
    let path = dir.path().display();
    assert_eq!(
        problems[0],
        format!(
            "extends-cycle: `extends` cycle: `{path}/a.yaml` → `{path}/sub/b.yaml` → `{path}/a.yaml`"
        )
    );

    dir.write(
        "m.yaml",
        "version: 1\nextends: [gone.yaml]\nnetwork: {mode: none}\n",
    );
    let problems = load(&dir, "m.yaml").unwrap_err();
    assert_eq!(
        problems,
        ["extends-missing: cannot read extended file `gone.yaml`: no such file"]
    );
}

#[test]
fn applying_a_policy_without_a_mode_is_an_error() {
    let dir = Dir::new();
    dir.write("p.yaml", "version: 1\nnetwork:\n  deny: [192.0.2.1]\n");
    let problems = load(&dir, "p.yaml").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("missing-mode:"), "{problems:?}");
}
