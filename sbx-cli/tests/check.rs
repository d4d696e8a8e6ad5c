//! `sbx check` as CI uses it: every problem in one run, directories, JSON, warnings, exit codes.

mod common;

use common::{Dir, check_human, check_json, errors, sbx};

const GOOD: &str = "version: 1\nnetwork:\n  mode: allowlist\n  allow: [example.com:443]\n";

#[test]
fn three_independent_errors_in_one_file_are_all_reported() {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - example.com:0\n    - \"*.com\"\n    - 10.0.0.1/8\n",
    );
    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!(status, 1);
    let found: Vec<(&str, u64)> = errors(&findings)
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            ("invalid-port", 5),
            ("invalid-wildcard", 6),
            ("cidr-host-bits", 7)
        ]
    );

    let (_, text) = check_human(dir.path(), &["p.yaml"]);
    assert!(
        text.ends_with("checked 1 file: 3 errors, 0 warnings\n"),
        "{text}"
    );
}

#[test]
fn a_directory_with_one_bad_file_reports_that_file_and_fails() {
    let dir = Dir::new();
    dir.write("repo/a.yaml", GOOD);
    dir.write("repo/team/b.yml", GOOD);
    dir.write(
        "repo/team/bad.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"https://x.example\"]\n",
    );
    dir.write("repo/z.yaml", GOOD);
    dir.write("repo/README.md", "not a policy");
    dir.write("repo/.github/workflows/ci.yml", "on: push\n");
    let (status, findings) = check_json(dir.path(), &["repo"]);
    assert_eq!(status, 1);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["file"], "repo/team/bad.yaml");

    let (status, text) = check_human(dir.path(), &["repo"]);
    assert_eq!(status, 1);
    assert!(text.contains("--> repo/team/bad.yaml:4:11"), "{text}");
    assert!(
        text.ends_with("checked 4 files: 1 error, 0 warnings\n"),
        "{text}"
    );
}

#[test]
fn json_findings_have_the_documented_fields() {
    let dir = Dir::new();
    dir.write("p.yaml", "version: 1\nnetwork:\n  mode: allowlist\n  allow: [a.example, a.example, b.example:99999]\n");
    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!(status, 1);
    assert_eq!(findings.len(), 2, "{findings:#?}");
    for f in &findings {
        for field in ["file", "line", "column", "severity", "code", "message"] {
            assert!(!f[field].is_null(), "`{field}` missing in {f:#}");
        }
    }
    let severities: Vec<&str> = findings
        .iter()
        .map(|f| f["severity"].as_str().unwrap())
        .collect();
    assert_eq!(severities, ["warning", "error"]);
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"*.co.uk:443\"]\n",
    );
    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!(status, 0);
    assert_eq!(findings[0]["code"], "wildcard-public-suffix");
    let out = sbx(&["check", "--deny-warnings", "p.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn each_likely_mistake_has_a_warning() {
    let cases = [
        ("allow: [a.example, a.example]", "duplicate-entry"),
        (
            "allow: [\"10.1.2.3:443\"]\n  deny: [10.0.0.0/8]",
            "shadowed-by-deny",
        ),
        (
            "allow: [\"*.api.example.com\"]\n  deny: [\"*.example.com\"]",
            "shadowed-by-deny",
        ),
        ("allow: [\"*.github.io\"]", "wildcard-public-suffix"),
        (
            "allow: [example.com:443]\n  deny: [169.254.169.254]",
            "ipv4-only",
        ),
        ("allow: []", "empty-allowlist"),
    ];
    for (network, code) in cases {
        let dir = Dir::new();
        dir.write(
            "p.yaml",
            &format!("version: 1\nnetwork:\n  mode: allowlist\n  {network}\n"),
        );
        let (status, findings) = check_json(dir.path(), &["p.yaml"]);
        assert_eq!(status, 0, "{network}: {findings:#?}");
        let codes: Vec<&str> = findings
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, [code], "{network}");
        assert_eq!(findings[0]["severity"], "warning");
    }
}

#[test]
fn a_partial_deny_or_a_deny_with_ipv6_gives_no_warning() {
    let dir = Dir::new();
    dir.write(
        "p.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"10.1.2.3\", \"*.example.com:443\"]\n  deny: [\"10.0.0.0/8:22\", example.com, fd00:ec2::254, 169.254.169.254]\n",
    );
    let (status, findings) = check_json(dir.path(), &["p.yaml"]);
    assert_eq!((status, findings.len()), (0, 0), "{findings:#?}");
}

#[test]
fn a_base_file_needs_no_mode_when_something_extends_it() {
    let dir = Dir::new();
    dir.write(
        "base/deny.yaml",
        "version: 1\nnetwork:\n  deny: [169.254.169.254, fd00:ec2::254]\n",
    );
    dir.write(
        "p.yaml",
        "version: 1\nextends: [base/deny.yaml]\nnetwork: {mode: none}\n",
    );
    let (status, findings) = check_json(dir.path(), &["."]);
    assert_eq!((status, findings.len()), (0, 0), "{findings:#?}");
    // Alone, the base file is a policy without a mode.
    let (status, findings) = check_json(dir.path(), &["base/deny.yaml"]);
    assert_eq!(status, 1);
    assert_eq!(findings[0]["code"], "missing-mode");
}

#[test]
fn problems_of_an_extended_file_are_reported_once() {
    let dir = Dir::new();
    dir.write(
        "base.yaml",
        "version: 1\nnetwork:\n  deny: [\"10.0.0.1/8\"]\n",
    );
    dir.write(
        "a.yaml",
        "version: 1\nextends: [base.yaml]\nnetwork: {mode: none}\n",
    );
    dir.write(
        "b.yaml",
        "version: 1\nextends: [base.yaml]\nnetwork: {mode: open}\n",
    );
    let (status, findings) = check_json(dir.path(), &["a.yaml", "b.yaml"]);
    assert_eq!(status, 1);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["file"], "base.yaml");
}

#[test]
fn missing_paths_and_empty_directories_are_errors() {
    let dir = Dir::new();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let (status, findings) = check_json(dir.path(), &["nope.yaml", "empty"]);
    assert_eq!(status, 1);
    let codes: Vec<&str> = findings
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["unreadable-file", "no-policy-files"]);
}

#[test]
fn the_shipped_policies_are_clean() {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let out = sbx(
        &["check", "--deny-warnings", policies],
        std::path::Path::new("."),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no problems"), "{stderr}");
}

#[test]
fn help_reads_like_documentation() {
    let out = sbx(&["check", "--help"], std::path::Path::new("."));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for needle in [
        "Examples:",
        "sbx check policies/",
        "--format",
        "--deny-warnings",
        "Exit status",
    ] {
        assert!(help.contains(needle), "`{needle}` missing from:\n{help}");
    }
    let out = sbx(&["--help"], std::path::Path::new("."));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("check") && help.contains("schema") && help.contains("Examples:"),
        "{help}"
    );
}

/// A command given without `--` is the likeliest mistake on `sbx apply`'s command line: the
/// error says how to write it.
#[test]
fn apply_without_the_double_dash_says_where_the_command_goes() {
    let dir = Dir::new();
    let policy = dir.write("p.yaml", "version: 1\nnetwork: {mode: none}\n");
    let out = sbx(
        &[
            "apply",
            policy.to_str().unwrap(),
            "curl",
            "-s",
            "http://example.com/",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("unexpected argument"), "{text}");
    assert!(text.contains("sbx apply POLICY -- CMD [ARGS]..."), "{text}");
}

/// `apply --help` speaks of both backends: `auto` picks either, and `--events` works on both.
#[test]
fn apply_help_names_both_backends() {
    let out = sbx(&["apply", "--help"], std::path::Path::new("."));
    let help = String::from_utf8(out.stdout).unwrap();
    let events = help
        .split("--events")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default();
    assert!(
        events.contains("eBPF") && events.contains("nftables"),
        "--events help: {events}"
    );
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("`auto`, the default"), "{help}");
}

/// `sbx completions bash`, sourced in bash, completes subcommands.
#[test]
fn bash_completion_completes_a_subcommand() {
    let script = format!(
        "source <({} completions bash); COMP_WORDS=(sbx ap); COMP_CWORD=1; COMP_LINE='sbx ap'; \
         COMP_POINT=6; _sbx sbx ap sbx; echo \"${{COMPREPLY[@]}}\"",
        env!("CARGO_BIN_EXE_sbx")
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "apply",
        "{out:?}"
    );
}

/// `sbx man DIR` writes sbx(1) and a page per subcommand, which man renders.
#[test]
fn man_pages_are_written_for_sbx_and_each_subcommand() {
    let dir = Dir::new();
    let out = sbx(&["man", "pages"], dir.path());
    assert!(out.status.success(), "{out:?}");
    for page in [
        "sbx.1",
        "sbx-apply.1",
        "sbx-check.1",
        "sbx-plan.1",
        "sbx-doctor.1",
    ] {
        let roff = std::fs::read_to_string(dir.path().join("pages").join(page)).unwrap();
        assert!(roff.contains(".SH NAME"), "{page}: {roff}");
    }
    let roff = std::fs::read_to_string(dir.path().join("pages/sbx-apply.1")).unwrap();
    assert!(roff.contains("sbx apply"), "{roff}");
    assert!(!dir.path().join("pages/sbx-__init.1").exists());
}
