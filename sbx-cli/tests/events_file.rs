//! `--events FILE` is written by sbx as root for a command that may run as someone else: it must
//! never write through a link the command (or an earlier run of it) put in the file's place, and
//! under sudo the file is created with the sudo user's rights. The real sbx, a DNS server the
//! test starts (a refused name is the denial that fills the file), `--user nobody` or
//! `SUDO_UID`. Needs root.

mod common;

use common::require_root;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Dir;
use common::dns::{DnsServer, Zone};
use common::testnet::exclusive;

const NOBODY: u32 = 65534;
const TARGET_TEXT: &str = "precious, root's\n";

/// A temporary directory only root can write (`dir`), holding a root-owned `target` file and a
/// directory `w` that nobody owns and can write.
struct Place {
    dir: Dir,
    _dns: DnsServer,
    policy: PathBuf,
    target: PathBuf,
    writable: PathBuf,
}

fn place() -> Place {
    let dir = Dir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = dir.write("target", TARGET_TEXT);
    let writable = dir.path().join("w");
    std::fs::create_dir(&writable).unwrap();
    std::os::unix::fs::chown(&writable, Some(NOBODY), Some(NOBODY)).unwrap();
    let dns = DnsServer::start(Zone::new());
    let policy = dir.write(
        "p.yaml",
        &format!(
            "version: 1\nnetwork:\n  mode: allowlist\n  allow: [\"*.allowed.test:8080\"]\n\
             dns:\n  servers: [\"{}\"]\n",
            dns.addr()
        ),
    );
    Place {
        dir,
        _dns: dns,
        policy,
        target,
        writable,
    }
}

/// The command: a refused name (a denial to write), then `script`, then `ran`.
fn sbx(place: &Place, events: &Path, who: &[(&str, &str)], script: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sbx"));
    command
        .args(["apply", "--backend", "nftables", "--events"])
        .arg(events)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID");
    for (key, value) in who {
        if key.starts_with("--") {
            command.args([key, value]);
        } else {
            command.env(key, value);
        }
    }
    command
        .arg(&place.policy)
        .args([
            "--",
            "sh",
            "-c",
            &format!(
                "dig +tries=1 +time=2 refused.test >/dev/null 2>&1; {script}\necho ran as $(id -u)"
            ),
        ])
        .output()
        .unwrap()
}

fn target_unchanged(place: &Place) {
    assert_eq!(
        std::fs::read_to_string(&place.target).unwrap(),
        TARGET_TEXT,
        "sbx wrote through a link into root's file"
    );
}

/// The command (as nobody, in a directory nobody can write) replaces the events file with a link
/// to a root-owned file while it runs: sbx writes nothing through it, and says why.
#[test]
fn a_link_swapped_in_while_the_command_runs_is_not_written_through() {
    require_root();
    let _guard = exclusive();
    let place = place();
    let events = place.writable.join("events.jsonl");
    let out = sbx(
        &place,
        &events,
        &[("--user", "nobody")],
        &format!(
            "rm -f {e} && ln -s {t} {e} && echo swapped",
            e = events.display(),
            t = place.target.display()
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("swapped\nran as 65534"), "{out:?}");
    target_unchanged(&place);
    assert!(
        std::fs::symlink_metadata(&events)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        stderr.contains("was removed or replaced while the command ran"),
        "{stderr}"
    );
}

/// A link (symbolic or hard) left at the events path, by an earlier run say: sbx refuses to
/// start, and the file it points to is left as it was.
#[test]
fn a_link_left_at_the_events_path_is_refused_before_the_command_runs() {
    require_root();
    let _guard = exclusive();
    let place = place();
    let symbolic = place.writable.join("symbolic.jsonl");
    std::os::unix::fs::symlink(&place.target, &symbolic).unwrap();
    let hard = place.dir.path().join("hard.jsonl");
    std::fs::hard_link(&place.target, &hard).unwrap();
    for (events, why) in [
        (&symbolic, "it is a symbolic link"),
        (&hard, "it has 2 hard links"),
    ] {
        let out = sbx(&place, events, &[("--user", "nobody")], "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ran as"),
            "the command ran: {out:?}"
        );
        target_unchanged(&place);
    }
}

/// Under sudo the file is opened with the sudo user's rights: created only where that user can
/// create it, and theirs. Run by root with `--user`, it is root's.
#[test]
fn the_events_file_is_opened_with_the_invoking_users_rights() {
    require_root();
    let _guard = exclusive();
    let place = place();
    let sudo = [("SUDO_UID", "65534"), ("SUDO_GID", "65534")];

    let mine = place.writable.join("mine.jsonl");
    let out = sbx(&place, &mine, &sudo, "");
    assert!(out.status.success(), "{out:?}");
    let meta = std::fs::metadata(&mine).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "{out:?}");
    let written = std::fs::read_to_string(&mine).unwrap();
    assert!(written.contains("\"name\":\"refused.test\""), "{written}");

    // Where the sudo user cannot create a file, or cannot write the one there: refused, and
    // nothing created or changed.
    let not_theirs = place.dir.path().join("not-theirs.jsonl");
    let out = sbx(&place, &not_theirs, &sudo, "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(!not_theirs.exists());
    let roots = place.writable.join("roots.jsonl");
    std::fs::write(&roots, TARGET_TEXT).unwrap();
    let out = sbx(&place, &roots, &sudo, "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(std::fs::read_to_string(&roots).unwrap(), TARGET_TEXT);

    let root_run = place.writable.join("root-run.jsonl");
    let out = sbx(&place, &root_run, &[("--user", "nobody")], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::metadata(&root_run).unwrap().uid(), 0);
}

/// The events file is the user's, and a command running as that user can write into it while it
/// runs: what it wrote is gone when sbx writes the events, so it cannot pass for one.
#[test]
fn lines_the_command_writes_into_the_events_file_do_not_stay() {
    require_root();
    let _guard = exclusive();
    let place = place();
    let events = place.writable.join("events.jsonl");
    let forged = r#"{"hook":"connect4","verdict":"allowed","forged":true}"#;
    let script = (0..50)
        .map(|_| format!("echo '{forged}' >> {}", events.display()))
        .collect::<Vec<_>>()
        .join("; ");
    let out = sbx(&place, &events, &[("--user", "nobody")], &script);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ran as 65534"),
        "{out:?}"
    );
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(!text.contains("forged"), "{text}");
    assert!(
        text.contains("refused.test"),
        "the real denial is there: {text}"
    );
}
