//! `sbx schema`: the committed copy is current, and it accepts every shipped policy and rejects
//! broken ones (checked with an independent JSON Schema validator).

mod common;

use std::path::{Path, PathBuf};

use common::yaml_as_json;

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&sbx::policy::schema::schema()).expect("the schema is valid")
}

#[test]
fn the_committed_schema_is_current() {
    let out = common::sbx(&["schema"], Path::new("."));
    assert!(out.status.success());
    let committed = std::fs::read_to_string(policies_dir().join("schema.json")).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "policies/schema.json is stale: run `cargo xtask schema` and commit it"
    );
}

#[test]
fn every_shipped_policy_validates() {
    let validator = validator();
    let mut checked = 0;
    for entry in walkdir::WalkDir::new(policies_dir()) {
        let path = entry.unwrap().into_path();
        // Policy tests (`NAME.test.yaml`) are not policies.
        if path.extension().is_none_or(|e| e != "yaml")
            || path.to_string_lossy().ends_with(".test.yaml")
        {
            continue;
        }
        let json = yaml_as_json(&std::fs::read_to_string(&path).unwrap());
        let problems: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        checked += 1;
    }
    assert!(checked >= 6, "found only {checked} policies");
}

#[test]
fn the_contract_example_validates() {
    let example = include_str!("../../docs/examples/complete.yaml");
    let json = yaml_as_json(example);
    assert!(validator().is_valid(&json), "{json:#}");
}

#[test]
fn broken_policies_do_not_validate() {
    let validator = validator();
    for broken in [
        "version: 2\n",
        "network: {mode: none}\n",
        "version: 1\nnetwork: {mode: closed}\n",
        "version: 1\nnetwork: {mode: none, alow: []}\n",
        "version: 1\nnetwork: {mode: none, allow: [example.com]}\n",
        "version: 1\nnetwork: {mode: allowlist, allow: [\"https://example.com\"]}\n",
        "version: 1\nnetwork: {mode: allowlist, allow: [{host: a.example, ip: 192.0.2.1}]}\n",
        "version: 1\nnetwork: {mode: allowlist, allow: [{host: a.example, ports: [70000]}]}\n",
        "version: 1\nnetwork: {mode: allowlist, allow: [{host: a.example, protocol: icmp}]}\n",
        "version: 1\ndns: {attempts: 0}\n",
    ] {
        assert!(
            !validator.is_valid(&yaml_as_json(broken)),
            "accepted: {broken}"
        );
    }
}
