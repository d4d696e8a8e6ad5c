//! `sbx diff`: two files, and two commits of a temporary git repository.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Dir, sbx};
use serde_json::Value;

const BASE: &str = "version: 1\nnetwork:\n  deny:\n    - 169.254.169.254\n";

const OLD: &str = "\
version: 1
extends: [base.yaml]
network:
  mode: allowlist
  allow:
    - github.com:443
    - \"*.example.com:443\"
";

fn run(dir: &Dir, args: &[&str]) -> (i32, String, String) {
    let out = sbx(args, dir.path());
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(dir: &Dir, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["diff", "--format", "json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run(dir, &all);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    (code, value)
}

#[test]
fn widening_exits_1_with_the_new_sides_provenance() {
    let dir = Dir::new();
    dir.write("base.yaml", BASE);
    dir.write("old.yaml", OLD);
    dir.write(
        "new.yaml",
        &OLD.replace(
            "    - github.com:443\n",
            "    - host: github.com\n      ports: [443, 8443]\n",
        ),
    );
    let (code, stdout, _) = run(&dir, &["diff", "old.yaml", "new.yaml"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "+ allow  {host: github.com, ports: [443, 8443]}  (new.yaml:6:7)  widens: tcp 8443"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("- allow  github.com:443  (old.yaml:6:7)"),
        "{stdout}"
    );
    assert!(stdout.contains("access widened in 1"), "{stdout}");
}

#[test]
fn narrowing_and_covered_additions_exit_0() {
    let dir = Dir::new();
    dir.write("base.yaml", BASE);
    dir.write("old.yaml", OLD);
    // A name the wildcard covers already, a removed entry and a new deny entry: nothing widens.
    let new = OLD.replace("    - github.com:443\n", "    - api.example.com:443\n")
        + "  deny:\n    - 10.0.0.0/8\n";
    dir.write("new.yaml", &new);
    let (code, value) = json(&dir, &["old.yaml", "new.yaml"]);
    assert_eq!(code, 0, "{value:#}");
    assert_eq!(value["widened"], false);
    let changes = value["policies"][0]["changes"].as_array().unwrap();
    let find = |change: &str, key: &str, value: &str| {
        changes
            .iter()
            .find(|c| c["change"] == change && c["key"] == key && c["value"] == value)
            .unwrap_or_else(|| panic!("no {change} {key} {value} in {changes:#?}"))
    };
    assert_eq!(
        find("added", "allow", "api.example.com:443")["widens"],
        false
    );
    assert_eq!(
        find("removed", "allow", "github.com:443")["origin"],
        "old.yaml:6:7"
    );
    assert_eq!(
        find("added", "deny", "10.0.0.0/8")["origin"],
        "new.yaml:9:7"
    );
    // Nothing changed at all: exit 0 too.
    assert_eq!(run(&dir, &["diff", "old.yaml", "old.yaml"]).0, 0);
}

#[test]
fn mode_deny_and_dns_changes() {
    let dir = Dir::new();
    dir.write("base.yaml", BASE);
    dir.write("old.yaml", OLD);
    dir.write(
        "open.yaml",
        "version: 1\nnetwork:\n  mode: open\ndns:\n  servers: [9.9.9.9]\n  grace: 1m\n",
    );
    let (code, value) = json(&dir, &["old.yaml", "open.yaml"]);
    assert_eq!(code, 1);
    let changes = value["policies"][0]["changes"].as_array().unwrap();
    let keyed = |key: &str, change: &str| {
        changes
            .iter()
            .find(|c| c["key"] == key && c["change"] == change)
            .unwrap_or_else(|| panic!("no {change} {key} in {changes:#?}"))
            .clone()
    };
    let mode = keyed("mode", "changed");
    assert_eq!(mode["value"], "allowlist → open");
    assert_eq!(mode["origin"], "open.yaml:3:9");
    assert_eq!(mode["widens"], true);
    let deny = keyed("deny", "removed");
    assert_eq!(deny["value"], "169.254.169.254");
    assert_eq!(deny["origin"], "base.yaml:4:7");
    assert_eq!(deny["widens"], true);
    let server = keyed("dns.servers", "added");
    assert_eq!(server["widens"], true);
    assert_eq!(server["origin"], "open.yaml:5:13");
    let grace = keyed("dns.grace", "changed");
    assert_eq!(grace["value"], "30s → 1m");
    assert_eq!(grace["origin"], "open.yaml:6:10");
    assert_eq!(grace["widens"], true);
    // A default is written nowhere.
    assert_eq!(keyed("dns.servers", "removed")["origin"], Value::Null);
    // The other way round narrows, but for the DNS server it brings (`system`).
    let (_, value) = json(&dir, &["open.yaml", "old.yaml"]);
    let widening: Vec<&Value> = value["policies"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["widens"] == true)
        .collect();
    assert_eq!(widening.len(), 1, "{widening:#?}");
    assert_eq!(widening[0]["value"], "system");
}

#[test]
fn markdown_for_a_pull_request_comment() {
    let dir = Dir::new();
    dir.write("base.yaml", BASE);
    dir.write("old.yaml", OLD);
    dir.write("new.yaml", &OLD.replace("github.com:443", "gitlab.com:443"));
    let (code, stdout, _) = run(
        &dir,
        &["diff", "--format", "markdown", "old.yaml", "new.yaml"],
    );
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with("### ⚠️ sbx diff: 1 policy compared, 1 changed: access widened in 1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("#### `old.yaml → new.yaml`: access widened\n\n```diff\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n+ allow  gitlab.com:443  (new.yaml:6:7)  widens\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n- allow  github.com:443  (old.yaml:6:7)\n```\n"),
        "{stdout}"
    );
}

#[test]
fn errors_exit_2() {
    let dir = Dir::new();
    dir.write("old.yaml", "version: 1\nnetwork: {mode: none}\n");
    dir.write("bad.yaml", "version: 1\nnetwork: {mode: nah}\n");
    let (code, _, stderr) = run(&dir, &["diff", "old.yaml", "bad.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("bad.yaml:2:17"), "{stderr}");
    assert_eq!(run(&dir, &["diff", "old.yaml"]).0, 2);
    assert_eq!(run(&dir, &["diff", "old.yaml", "missing.yaml"]).0, 2);
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=sbx test",
            "-c",
            "user.email=test@sbx.invalid",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(repo)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository with a base file two policies extend, and a third that extends nothing.
fn repo() -> Dir {
    let dir = Dir::new();
    dir.write("policies/base/deny.yaml", BASE);
    let extending = |host: &str| {
        OLD.replace("base.yaml", "base/deny.yaml")
            .replace("github.com", host)
    };
    dir.write("policies/a.yaml", &extending("a.test"));
    dir.write("policies/b.yaml", &extending("b.test"));
    dir.write(
        "policies/alone.yaml",
        "version: 1\nnetwork:\n  mode: none\n",
    );
    dir.write("README.yaml", "not: a policy under policies/\n");
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "first"]);
    dir
}

#[test]
fn a_change_to_a_base_file_shows_in_every_policy_that_extends_it() {
    let dir = repo();
    dir.write(
        "policies/base/deny.yaml",
        "version: 1\nnetwork:\n  deny: []\n",
    );
    git(
        dir.path(),
        &["commit", "-q", "-am", "drop the metadata denial"],
    );
    let (code, value) = json(&dir, &["--git", "HEAD~1..HEAD", "policies"]);
    assert_eq!(code, 1, "{value:#}");
    let paths: Vec<&str> = value["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["policies/a.yaml", "policies/b.yaml"]);
    let change = &value["policies"][0]["changes"][0];
    assert_eq!(change["change"], "removed");
    assert_eq!(change["value"], "169.254.169.254");
    assert_eq!(change["origin"], "HEAD~1:policies/base/deny.yaml:4:7");
    assert_eq!(change["widens"], true);
}

#[test]
fn the_working_tree_against_a_commit_and_added_policies() {
    let dir = repo();
    dir.write(
        "policies/b.yaml",
        &std::fs::read_to_string(dir.path().join("policies/b.yaml"))
            .unwrap()
            .replace("b.test:443", "b.test:80"),
    );
    dir.write(
        "policies/new.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow: [c.test:443]\n",
    );
    let (code, stdout, stderr) = run(&dir, &["diff", "--git", "HEAD"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("policies/b.yaml: access widened"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ allow  b.test:80  (policies/b.yaml:6:7)  widens"),
        "{stdout}"
    );
    assert!(
        stdout.contains("- allow  b.test:443  (HEAD:policies/b.yaml:6:7)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policies/new.yaml: new policy, access widened"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("policies/a.yaml"),
        "a.yaml did not change: {stdout}"
    );
    // Only comments changed: listed, and nothing widens.
    git(dir.path(), &["checkout", "-q", "--", "policies/b.yaml"]);
    std::fs::remove_file(dir.path().join("policies/new.yaml")).unwrap();
    dir.write(
        "policies/alone.yaml",
        "# no network\nversion: 1\nnetwork:\n  mode: none\n",
    );
    let (code, stdout, _) = run(&dir, &["diff", "--git", "HEAD", "policies/"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("policies/alone.yaml: access unchanged"),
        "{stdout}"
    );
}

#[test]
fn a_bad_revision_exits_2() {
    let dir = repo();
    let (code, _, stderr) = run(&dir, &["diff", "--git", "no-such-rev..HEAD"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no-such-rev"), "{stderr}");
}

/// `--resolve`: each side's names resolved by a DNS server started here (on loopback, named by
/// the policies' own `dns.servers`), their addresses compared as destinations, and the verdict
/// against the offline one.
#[test]
fn resolve_compares_the_addresses_names_resolve_to() {
    use common::dns::{DnsServer, Zone};
    let server = DnsServer::start(
        Zone::new()
            .addrs("api.test", &["10.20.9.5"], 300)
            .addrs("ok.test", &["192.0.2.20"], 300)
            .addrs("twin.test", &["192.0.2.20"], 300),
    );
    let policy = |allow: &[&str], deny: &[&str]| {
        let list = |items: &[&str]| {
            items
                .iter()
                .map(|i| format!("    - {i}\n"))
                .collect::<String>()
        };
        format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n{}  deny:\n{}\
             dns:\n  servers: [\"{}\"]\n  timeout: 500ms\n  attempts: 1\n",
            list(allow),
            list(deny),
            server.addr()
        )
    };
    let dir = Dir::new();
    let allow = ["api.test:443", "ok.test:443"];
    dir.write(
        "old.yaml",
        &policy(&allow, &["10.20.9.0/24", "10.30.0.0/16"]),
    );
    let diff = |new: &str, resolve: bool| {
        dir.write("new.yaml", new);
        let mut args = vec!["diff"];
        if resolve {
            args.push("--resolve");
        }
        args.extend(["old.yaml", "new.yaml"]);
        let (code, stdout, stderr) = run(&dir, &args);
        (code, format!("{stdout}{stderr}"))
    };

    // A deny block removed where no allowed name resolves now: it still widens (a name may
    // resolve there later), and the note says that none does now.
    let new = policy(&allow, &["10.20.9.0/24"]);
    let (code, out) = diff(&new, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("- deny   10.30.0.0/16  (old.yaml:9:7)  widens: tcp 443"),
        "{out}"
    );
    assert!(!out.contains("note:"), "{out}");
    let (code, out) = diff(&new, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("note: `10.30.0.0/16` (old.yaml:9:7): no allowed name resolves into it now"),
        "{out}"
    );

    // A denied name removed that shares its address with an allowed name: offline two names
    // never meet; resolved, the allowed name's address is released.
    dir.write("old.yaml", &policy(&allow, &["10.20.9.0/24", "twin.test"]));
    let new = policy(&allow, &["10.20.9.0/24"]);
    let (code, out) = diff(&new, false);
    assert_eq!(code, 0, "{out}");
    let (code, out) = diff(&new, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("- deny   twin.test  (old.yaml:9:7)  widens: tcp 443"),
        "{out}"
    );
    assert!(
        out.contains("+ address 192.0.2.20 (ok.test)  (new.yaml:6:7)  widens: tcp 443"),
        "{out}"
    );
    dir.write(
        "old.yaml",
        &policy(&allow, &["10.20.9.0/24", "10.30.0.0/16"]),
    );

    // The deny block an allowed name resolves into, removed: the name's address shows.
    let new = policy(&allow, &["10.30.0.0/16"]);
    let (code, out) = diff(&new, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("+ address 10.20.9.5 (api.test)  (new.yaml:5:7)  widens: tcp 443"),
        "{out}"
    );

    // A block that now covers an allowed name's address: offline only the block shows.
    let wider = ["api.test:443", "ok.test:443", "192.0.2.0/24"];
    let new = policy(&wider, &["10.20.9.0/24", "10.30.0.0/16"]);
    let (code, out) = diff(&new, false);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("address"), "{out}");
    let (code, out) = diff(&new, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "+ address 192.0.2.20 (ok.test)  (new.yaml:7:7)  widens: tcp 1-442,444-65535; \
             udp every port; protocols without ports (ICMP, …)"
        ),
        "{out}"
    );
    let (code, value) = json(&dir, &["--resolve", "old.yaml", "new.yaml"]);
    assert_eq!(code, 1);
    let change = value["policies"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "address")
        .expect("an address change");
    assert_eq!(change["value"], "192.0.2.20 (ok.test)");
    assert_eq!(change["widens"], true);

    // A deny that now holds an allowed name's address narrows it.
    let new = policy(&allow, &["10.20.9.0/24", "10.30.0.0/16", "192.0.2.20"]);
    let (code, out) = diff(&new, true);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("- address 192.0.2.20 (ok.test): tcp 443  (new.yaml:10:7)"),
        "{out}"
    );

    // A name without an answer is compared by name, and said so.
    let with_gone = ["api.test:443", "ok.test:443", "gone.test:443"];
    dir.write(
        "old.yaml",
        &policy(&with_gone, &["10.20.9.0/24", "10.30.0.0/16"]),
    );
    let (code, out) = diff(&policy(&with_gone, &["10.20.9.0/24", "10.30.0.0/16"]), true);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: `gone.test` does not resolve on either side (NXDOMAIN"),
        "{out}"
    );
    dir.write(
        "old.yaml",
        &policy(&allow, &["10.20.9.0/24", "10.30.0.0/16"]),
    );
    let (_, out) = diff(&policy(&with_gone, &["10.20.9.0/24", "10.30.0.0/16"]), true);
    assert!(
        out.contains("note: `gone.test` does not resolve on the new side (NXDOMAIN"),
        "{out}"
    );
}
