//! `sbx export`: every shipped policy validates against Cilium's own CRD schemas, the outputs for
//! policies that use every feature match the committed golden files, the wildcard translation
//! keeps sbx's meaning on Cilium's documented examples, and each refusal says what and where.
//! No root, no network.

mod common;

use std::path::{Path, PathBuf};

use common::{Dir, sbx, yaml_as_json};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn schema(file: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schemas/cilium")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (see tests/schemas/cilium/README.md)",
            path.display()
        )
    });
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("a valid schema")
}

/// Runs `sbx export ARGS` in `cwd`: exit code, stdout, stderr.
fn export(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let out = sbx(&all, cwd);
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Each `---`-separated YAML document of `text`, as JSON.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n").map(yaml_as_json).collect()
}

fn assert_valid(validator: &jsonschema::Validator, doc: &Value, what: &str) {
    let problems: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(problems.is_empty(), "{what}: {problems:#?}\n{doc:#}");
}

fn shipped_policies() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| sbx::policy::is_policy_file(p))
        .collect();
    paths.push(repo().join("docs/examples/complete.yaml"));
    paths.sort();
    paths
}

#[test]
fn every_shipped_policy_exports_to_a_valid_cilium_network_policy() {
    let validator = schema("ciliumnetworkpolicy_v2.json");
    let paths = shipped_policies();
    assert!(paths.len() >= 6, "found only {paths:?}");
    for path in &paths {
        let path = path.to_str().unwrap();
        let (code, stdout, stderr) =
            export(&["--format", "cilium", "--namespace", "ci", path], &repo());
        assert_eq!(code, 0, "{path}: {stderr}");
        let docs = documents(&stdout);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["apiVersion"], "cilium.io/v2");
        assert_eq!(docs[0]["kind"], "CiliumNetworkPolicy");
        assert_eq!(docs[0]["metadata"]["namespace"], "ci");
        assert_valid(&validator, &docs[0], path);
    }
}

#[test]
fn every_shipped_policy_exports_to_a_valid_clusterwide_policy_in_one_stream() {
    let validator = schema("ciliumclusterwidenetworkpolicy_v2.json");
    let paths = shipped_policies();
    let mut args = vec![
        "--format",
        "cilium",
        "--clusterwide",
        "--selector",
        "app=build",
    ];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let (code, stdout, stderr) = export(&args, &repo());
    assert_eq!(code, 0, "{stderr}");
    let docs = documents(&stdout);
    assert_eq!(docs.len(), paths.len());
    for doc in &docs {
        assert_eq!(doc["kind"], "CiliumClusterwideNetworkPolicy");
        assert!(doc["metadata"].get("namespace").is_none());
        assert_eq!(
            doc["spec"]["endpointSelector"]["matchLabels"]["app"],
            "build"
        );
        assert_valid(&validator, doc, doc["metadata"]["name"].as_str().unwrap());
    }
}

/// `sbx export ARGS` of a file in tests/golden equals the committed output. `SBX_BLESS=1`
/// rewrites the golden file instead, for a reviewed change.
fn golden(args: &[&str], expected: &str) -> String {
    let (code, stdout, stderr) = export(args, &golden_dir());
    assert_eq!(code, 0, "{stderr}");
    let path = golden_dir().join(expected);
    if std::env::var_os("SBX_BLESS").is_some() {
        std::fs::write(&path, &stdout).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stdout == committed,
        "{} differs from the output (SBX_BLESS=1 rewrites it):\n{stdout}",
        path.display()
    );
    stderr
}

#[test]
fn golden_cilium_every_feature() {
    let stderr = golden(
        &[
            "--format",
            "cilium",
            "--namespace",
            "ci",
            "--selector",
            "app=build",
            "every-feature.yaml",
        ],
        "every-feature.cilium.yaml",
    );
    // The one narrowing is reported on stderr, and in the file (checked by the golden).
    assert!(stderr.contains("warning[name-other-protocols]"), "{stderr}");
    assert!(stderr.contains("every-feature.yaml:11:7"), "{stderr}");
    let doc = &documents(
        &std::fs::read_to_string(golden_dir().join("every-feature.cilium.yaml")).unwrap(),
    )[0];
    assert_valid(&schema("ciliumnetworkpolicy_v2.json"), doc, "every-feature");
}

#[test]
fn golden_cilium_open_and_older_wildcards() {
    golden(&["--format", "cilium", "open.yaml"], "open.cilium.yaml");
    let stderr = golden(
        &[
            "--format",
            "cilium",
            "--wildcard-depth",
            "3",
            "--name",
            "every-feature-old",
            "every-feature.yaml",
        ],
        "every-feature.cilium-depth3.yaml",
    );
    assert!(stderr.contains("warning[wildcard-depth]"), "{stderr}");
    let validator = schema("ciliumnetworkpolicy_v2.json");
    for file in ["open.cilium.yaml", "every-feature.cilium-depth3.yaml"] {
        let doc = &documents(&std::fs::read_to_string(golden_dir().join(file)).unwrap())[0];
        assert_valid(&validator, doc, file);
    }
}

#[test]
fn golden_kubernetes_and_systemd() {
    golden(
        &["--format", "kubernetes", "addresses.yaml"],
        "addresses.kubernetes.yaml",
    );
    golden(
        &["--format", "kubernetes", "open.yaml"],
        "open.kubernetes.yaml",
    );
    let stderr = golden(
        &["--format", "systemd", "--widen-ports", "addresses.yaml"],
        "addresses.systemd.conf",
    );
    assert!(stderr.contains("warning[widened-ports]"), "{stderr}");
    golden(&["--format", "systemd", "open.yaml"], "open.systemd.conf");
}

/// The shape of a NetworkPolicy (networking.k8s.io/v1) as the API server checks it; no schema
/// of it is kept here, so the fields sbx writes are checked one by one.
fn assert_network_policy(doc: &Value) {
    assert_eq!(doc["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(doc["kind"], "NetworkPolicy");
    assert!(doc["metadata"]["name"].is_string());
    let spec = doc["spec"].as_object().expect("spec");
    let known = ["podSelector", "policyTypes", "egress"];
    assert!(spec.keys().all(|k| known.contains(&k.as_str())), "{spec:?}");
    assert!(spec["podSelector"].is_object());
    assert_eq!(spec["policyTypes"], serde_json::json!(["Egress"]));
    for rule in spec["egress"].as_array().expect("egress list") {
        let rule = rule.as_object().unwrap();
        assert!(rule.keys().all(|k| k == "to" || k == "ports"), "{rule:?}");
        for peer in rule
            .get("to")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let block = &peer["ipBlock"];
            let cidr: ipnet::IpNet = block["cidr"].as_str().unwrap().parse().expect("a CIDR");
            for except in block
                .get("except")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let except: ipnet::IpNet = except.as_str().unwrap().parse().expect("a CIDR");
                assert!(
                    cidr.contains(&except) && cidr != except,
                    "{except} not strictly inside {cidr}"
                );
            }
        }
        for port in rule
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(["TCP", "UDP"].contains(&port["protocol"].as_str().unwrap()));
            if let Some(end) = port.get("endPort") {
                assert!(
                    end.as_i64().unwrap() >= port["port"].as_i64().expect("endPort needs port")
                );
            }
        }
    }
}

#[test]
fn kubernetes_output_has_the_shape_of_a_network_policy() {
    for file in ["addresses.kubernetes.yaml", "open.kubernetes.yaml"] {
        let doc = &documents(&std::fs::read_to_string(golden_dir().join(file)).unwrap())[0];
        assert_network_policy(doc);
    }
    let deny_all = repo().join("policies/deny-all.yaml");
    let (code, stdout, stderr) = export(
        &["--format", "kubernetes", deny_all.to_str().unwrap()],
        &repo(),
    );
    assert_eq!(code, 0, "{stderr}");
    let doc = &documents(&stdout)[0];
    assert_network_policy(doc);
    assert_eq!(
        doc["spec"]["egress"],
        serde_json::json!([]),
        "mode none denies all egress"
    );
}

/// Cilium's `matchPattern`, as its CRD documents it (tests/schemas/cilium/README.md): `*`
/// is any run of label characters (one label, no dot); Cilium 1.19 and later read a leading
/// `**.` as one or more whole labels.
fn cilium_matches(pattern: &str, name: &str) -> bool {
    fn glob(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len())
                .take_while(|&i| i == 0 || n[i - 1] != b'.')
                .any(|i| glob(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && glob(rest, &n[1..]),
        }
    }
    match pattern.strip_prefix("**.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|front| front.strip_suffix('.'))
            .is_some_and(|front| !front.is_empty() && front.split('.').all(|l| !l.is_empty())),
        None => glob(pattern.as_bytes(), name.as_bytes()),
    }
}

fn patterns(stdout: &str) -> Vec<String> {
    let doc = &documents(stdout)[0];
    doc["spec"]["egress"][0]["toFQDNs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["matchPattern"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn wildcards_keep_sbx_meaning_on_ciliums_documented_examples() {
    // The README's (and Cilium's CRD's) own examples of `*.cilium.io`, read by Cilium.
    assert!(cilium_matches("*.cilium.io", "www.cilium.io"));
    assert!(cilium_matches("*.cilium.io", "blog.cilium.io"));
    assert!(!cilium_matches("*.cilium.io", "cilium.io"));
    assert!(!cilium_matches("*.cilium.io", "a.b.cilium.io"));
    assert!(cilium_matches("*cilium.io", "subcilium.io"));
    assert!(cilium_matches("sub*.cilium.io", "subdomain.cilium.io"));
    assert!(!cilium_matches("sub*.cilium.io", "www.cilium.io"));

    let dir = Dir::new();
    dir.write(
        "w.yaml",
        "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - \"*.cilium.io:443\"\n",
    );
    let names = [
        "www.cilium.io",
        "blog.cilium.io",
        "a.b.cilium.io",
        "x.y.z.cilium.io",
        "cilium.io",
        "subcilium.io",
        "google.com",
    ];
    let sbx_meaning = |name: &str| {
        sbx::policy::name::pattern_matches(
            "*.cilium.io",
            &sbx::policy::name::HostName::parse(name).unwrap(),
        )
    };

    let (code, stdout, stderr) = export(&["--format", "cilium", "w.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let exported = patterns(&stdout);
    assert_eq!(exported, ["**.cilium.io"]);
    for name in names {
        let cilium = exported.iter().any(|p| cilium_matches(p, name));
        assert_eq!(
            cilium,
            sbx_meaning(name),
            "{name}: Cilium 1.19 and sbx disagree"
        );
    }

    // Older releases: one pattern per depth, never wider than sbx, the same up to the depth.
    let (code, stdout, stderr) = export(
        &["--format", "cilium", "--wildcard-depth", "2", "w.yaml"],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("1 to 2 labels below `cilium.io`"),
        "{stderr}"
    );
    let exported = patterns(&stdout);
    assert_eq!(exported, ["*.cilium.io", "*.*.cilium.io"]);
    for name in names {
        let cilium = exported.iter().any(|p| cilium_matches(p, name));
        let depth = name.matches('.').count() - 1;
        assert!(!cilium || sbx_meaning(name), "{name}: wider than sbx");
        assert_eq!(cilium, sbx_meaning(name) && depth <= 2, "{name}");
    }
}

/// `sbx export ARGS` of `policy` (a file `p.yaml`) fails with exit 1, nothing on stdout, and
/// stderr holding every one of `expected`.
fn refused(policy: &str, args: &[&str], expected: &[&str]) {
    let dir = Dir::new();
    dir.write("p.yaml", policy);
    let mut all = args.to_vec();
    all.push("p.yaml");
    let (code, stdout, stderr) = export(&all, dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "", "nothing is written when an export fails");
    for text in expected {
        assert!(stderr.contains(text), "missing {text:?} in:\n{stderr}");
    }
}

const LOOPBACK: &str = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - localhost:5432\n";

#[test]
fn refuses_the_hosts_loopback_in_cilium_and_kubernetes() {
    for format in ["cilium", "kubernetes"] {
        refused(
            LOOPBACK,
            &["--format", format],
            &[
                "error[loopback-entry]: this entry opens a service on the host's loopback",
                "a pod's loopback is its own",
                "--> p.yaml:5:7",
                "localhost:5432",
                "no export of p.yaml: 1 error, 0 warnings",
            ],
        );
    }
}

#[test]
fn refuses_a_deny_name_inside_an_allowed_wildcard() {
    refused(
        "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - \"*.example.com:443\"\n  deny:\n    - bad.example.com\n",
        &["--format", "cilium"],
        &[
            "error[deny-name-inside-allow]: Cilium cannot keep `bad.example.com` out of the allowed name `*.example.com:443`",
            "--> p.yaml:7:7",
            "allowed here",
            "help: list the allowed names one by one",
        ],
    );
}

#[test]
fn refuses_a_deny_name_in_mode_open_without_resolve() {
    refused(
        "version: 1\nnetwork:\n  mode: open\n  deny:\n    - tracker.example.com\n",
        &["--format", "cilium"],
        &[
            "error[deny-name]: Cilium cannot deny `tracker.example.com` by name, and mode open does not filter DNS",
            "--> p.yaml:5:7",
            "--resolve",
        ],
    );
}

#[test]
fn refuses_names_and_wildcards_in_kubernetes_and_systemd() {
    let policy = "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - crates.io:443\n    - \"*.github.com:443\"\n";
    refused(
        policy,
        &["--format", "kubernetes"],
        &[
            "error[name-entry]: a Kubernetes NetworkPolicy has no host names, and `crates.io` is one",
            "--> p.yaml:5:7",
            "help: export with --resolve",
            "error[wildcard-entry]: a Kubernetes NetworkPolicy cannot follow DNS answers, and `*.github.com` has no addresses to write",
            "--> p.yaml:6:7",
        ],
    );
    refused(
        policy,
        &["--format", "systemd"],
        &[
            "error[name-entry]: IPAddressAllow= takes addresses, and `crates.io` is a host name",
            "error[wildcard-entry]: IPAddressAllow= takes addresses, and `*.github.com` has none to write",
        ],
    );
}

#[test]
fn refuses_ports_in_systemd_unless_widened() {
    refused(
        "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - 10.0.0.0/8:5432\n    - 192.0.2.10\n",
        &["--format", "systemd"],
        &[
            "error[ports-not-expressible]: IPAddressAllow= cannot restrict ports or protocols: the whole address would be allowed",
            "--> p.yaml:5:7",
            "help: pass --widen-ports",
            "error[ports-not-expressible]: IPAddressAllow= would let DNS (port 53) reach this destination",
            "--> p.yaml:6:7",
        ],
    );
}

#[test]
fn refuses_a_deny_of_some_ports_where_kubernetes_would_need_it() {
    refused(
        "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - 10.0.0.0/8:5432\n  deny:\n    - 10.1.0.0/16:5432\n",
        &["--format", "kubernetes"],
        &[
            "error[deny-ports]: a NetworkPolicy has no deny rules: a denial is written as an `except` of an allowed block, which cannot hold ports",
            "--> p.yaml:7:7",
        ],
    );
}

#[test]
fn refuses_options_that_do_not_fit() {
    let policy = "version: 1\nname: CI_Build\nnetwork:\n  mode: none\n";
    refused(
        policy,
        &["--format", "cilium"],
        &[
            "error[invalid-object-name]: `CI_Build` (the policy's name) is not a Kubernetes object name",
            "--name",
        ],
    );
    refused(
        policy,
        &["--format", "cilium", "--clusterwide", "--name", "ci"],
        &[
            "error[clusterwide-without-selector]: a clusterwide policy without --selector selects every pod of every namespace",
        ],
    );
    refused(
        policy,
        &[
            "--format",
            "kubernetes",
            "--name",
            "ci",
            "--wildcard-depth",
            "2",
        ],
        &["error[export-option]: --wildcard-depth applies to --format cilium only"],
    );
    let dir = Dir::new();
    dir.write("a.yaml", "version: 1\nnetwork:\n  mode: none\n");
    let (code, stdout, stderr) = export(
        &["--format", "cilium", "--name", "x", "a.yaml", "a.yaml"],
        dir.path(),
    );
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("--name takes one policy, not 2"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_policy_is_reported_as_by_check_and_nothing_is_written() {
    refused(
        "version: 1\nnetwork:\n  mode: allowlist\n  allow:\n    - 10.0.0.1/8\n",
        &["--format", "cilium"],
        &[
            "error[cidr-host-bits]",
            "--> p.yaml:5:7",
            "no export of p.yaml",
        ],
    );
}

/// `--resolve` writes a name as the addresses sbx's resolver finds with the policy's own `dns`
/// settings (a test DNS server on loopback here), with a warning that they go stale; a name
/// that does not resolve is an error and nothing is written.
#[test]
fn resolve_writes_a_name_as_its_current_addresses() {
    use common::dns::{DnsServer, Zone};
    let dns = DnsServer::start(
        Zone::new()
            .addrs("db.example.test", &["192.0.2.7", "192.0.2.8"], 300)
            .addrs("gone.example.test", &[], 300),
    );
    let dir = Dir::new();
    let write = |name: &str, entry: &str| {
        dir.write(
            name,
            &format!(
                "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"{entry}\"]\n\
                 dns:\n  servers: [\"{}\"]\n  timeout: 500ms\n  attempts: 1\n",
                dns.addr()
            ),
        )
    };
    write("db.yaml", "db.example.test:5432");
    let (code, stdout, stderr) = export(
        &["--format", "kubernetes", "--resolve", "db.yaml"],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("192.0.2.7/32") && stdout.contains("192.0.2.8/32"),
        "{stdout}"
    );
    assert!(stderr.contains("resolved-addresses"), "{stderr}");
    // Without --resolve, a name is refused for Kubernetes.
    let (code, _, stderr) = export(&["--format", "kubernetes", "db.yaml"], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("name-entry"), "{stderr}");

    write("gone.yaml", "gone.example.test:443");
    let (code, stdout, stderr) = export(
        &["--format", "kubernetes", "--resolve", "gone.yaml"],
        dir.path(),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("resolve-failed"), "{stderr}");
}
