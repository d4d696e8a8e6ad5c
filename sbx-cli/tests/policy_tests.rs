//! `sbx test`: expectations beside policies (`NAME.test.yaml`).

mod common;

use common::{Dir, sbx};

const POLICY: &str = "\
version: 1
network:
  mode: allowlist
  allow:
    - \"*.example.com:443\"
  deny:
    - bad.example.com
";

fn run(dir: &Dir, args: &[&str]) -> (i32, String) {
    let out = sbx(args, dir.path());
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn passing_tests_exit_0_with_a_summary() {
    let dir = Dir::new();
    dir.write("policies/web.yaml", POLICY);
    dir.write(
        "policies/web.test.yaml",
        "allow:\n  - a.example.com:443\n  - a.b.example.com:443\ndeny:\n  - example.com:443\n  - bad.example.com:443\n  - a.example.com:80\n",
    );
    let (code, stderr) = run(&dir, &["test", "policies/"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.ends_with("tested 1 file: 5 passed, 0 failed\n"),
        "{stderr}"
    );
    // `sbx check` takes test files for what they are, not for policies.
    let (code, stderr) = run(&dir, &["check", "--deny-warnings", "policies/"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("checked 1 file"), "{stderr}");
    // Naming the policy runs the test file beside it.
    assert_eq!(run(&dir, &["test", "policies/web.yaml"]).0, 0);
}

#[test]
fn a_failing_case_is_shown_at_its_line_with_the_deciding_rule() {
    let dir = Dir::new();
    dir.write("web.yaml", POLICY);
    dir.write(
        "web.test.yaml",
        "allow:\n  - example.com:443\n  - bad.example.com:443\ndeny:\n  - a.example.com:443\n",
    );
    let (code, stderr) = run(&dir, &["test", "web.test.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    for needle in [
        "error[test-failed]: `example.com:443` should be allowed by `web`, but it is denied",
        "--> web.test.yaml:2:5",
        "not in the allowlist",
        "error[test-failed]: `bad.example.com:443` should be allowed by `web`, but it is denied",
        "--> web.test.yaml:3:5",
        "denied by this entry",
        "error[test-failed]: `a.example.com:443` should be denied by `web`, but it is allowed",
        "--> web.test.yaml:5:5",
        "allowed by this entry",
        "help: `sbx explain web.yaml a.example.com:443` shows why",
        "tested 1 file: 0 passed, 3 failed",
    ] {
        assert!(
            stderr.contains(needle),
            "`{needle}` missing from:\n{stderr}"
        );
    }
}

#[test]
fn malformed_tests_and_untested_policies() {
    let dir = Dir::new();
    dir.write("web.yaml", POLICY);
    dir.write("other.yaml", POLICY);
    dir.write("base.yaml", "version: 1\nnetwork:\n  deny: [192.0.2.1]\n");
    dir.write(
        "web.test.yaml",
        "alow:\n  - a.example.com:443\ndeny:\n  - bad_name:443\n",
    );
    let (code, stderr) = run(&dir, &["test", "."]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("error[unknown-key]"), "{stderr}");
    assert!(stderr.contains("--> ./web.test.yaml:1:1"), "{stderr}");
    assert!(stderr.contains("error[invalid-case]"), "{stderr}");
    // The base file (no mode) is not a policy to test; other.yaml is.
    assert!(stderr.contains("`./other.yaml` has no tests"), "{stderr}");
    assert!(!stderr.contains("base.yaml"), "{stderr}");
    // Untested alone fails only with --deny-untested.
    dir.write("web.test.yaml", "allow: [a.example.com:443]\n");
    assert_eq!(run(&dir, &["test", "."]).0, 0);
    let (code, stderr) = run(&dir, &["test", "--deny-untested", "."]);
    assert_eq!(code, 1);
    assert!(
        stderr.ends_with("1 passed, 0 failed, 1 policy without tests\n"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_policies_pass_their_tests() {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let out = sbx(
        &["test", "--deny-untested", policies],
        std::path::Path::new("."),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(" 0 failed"), "{stderr}");
}
