//! The two sides of `sbx diff --git`: policy files as a commit holds them (read out of the
//! repository into a private temporary directory, since a policy's `extends` are files), or as
//! the working tree holds them.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One version of the repository's policy files.
pub struct Side {
    /// Where the files are read from.
    pub root: PathBuf,
    /// How the side's paths are shown: `REV:` for a commit, nothing for the working tree.
    pub label: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Side {
    pub fn worktree(root: &Path) -> Side {
        Side {
            root: root.to_path_buf(),
            label: String::new(),
            _tmp: None,
        }
    }

    /// The `*.yaml` / `*.yml` files of commit `rev`, written out under a temporary directory.
    pub fn commit(repo: &Path, rev: &str) -> Result<Side, String> {
        let tmp = tempfile::Builder::new()
            .prefix("sbx-diff-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let listing = git(repo, &["ls-tree", "-r", "-z", "--full-tree", rev])?;
        let blobs: Vec<(&str, &str)> = listing
            .split('\0')
            .filter_map(|item| {
                let (meta, path) = item.split_once('\t')?;
                let mut meta = meta.split(' ');
                let (_, kind, hash) = (meta.next()?, meta.next()?, meta.next()?);
                let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
                (kind == "blob" && yaml).then_some((hash, path))
            })
            .collect();
        let mut child = Command::new("git")
            .args(["cat-file", "--batch"])
            .current_dir(repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run git: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let hashes: String = blobs.iter().map(|(hash, _)| format!("{hash}\n")).collect();
        // Written from another thread: git answers as it reads, and a full pipe both ways
        // would stall both.
        let writer = std::thread::spawn(move || stdin.write_all(hashes.as_bytes()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        for (_, path) in &blobs {
            let mut header = String::new();
            stdout
                .read_line(&mut header)
                .map_err(|e| format!("reading git cat-file: {e}"))?;
            let size: usize = header
                .split(' ')
                .nth(2)
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| format!("unexpected git cat-file output: {header}"))?;
            let mut content = vec![0; size + 1];
            stdout
                .read_exact(&mut content)
                .map_err(|e| format!("reading git cat-file: {e}"))?;
            content.pop();
            let target = tmp.path().join(path);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&target, content).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        writer
            .join()
            .expect("writer thread")
            .map_err(|e| format!("writing to git cat-file: {e}"))?;
        child.wait().map_err(|e| format!("git cat-file: {e}"))?;
        Ok(Side {
            root: tmp.path().to_path_buf(),
            label: format!("{rev}:"),
            _tmp: Some(tmp),
        })
    }

    /// The text of `rel` on this side, if it has the file.
    pub fn text(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(rel)).ok()
    }

    /// Policy files (not policy tests) below `rel`, as paths relative to the root, sorted.
    /// Hidden directories are skipped, as `sbx check` skips them.
    pub fn policy_files(&self, rel: &Path) -> Vec<String> {
        let start = self.root.join(rel);
        if start.is_file() {
            return vec![rel.display().to_string()];
        }
        walkdir::WalkDir::new(&start)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && crate::policy::is_policy_file(e.path()))
            .filter_map(|e| {
                e.path()
                    .strip_prefix(&self.root)
                    .ok()
                    .map(|p| p.display().to_string())
            })
            .collect()
    }
}

/// Runs git in `repo` and returns its standard output.
pub fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("`git {}`: not UTF-8", args.join(" ")))
}

/// `A..B` (two commits), `A...B` (B against where it left A, as a pull request is reviewed),
/// `A..` (A and HEAD), or `A` (A and the working tree): the old and, unless it is the working
/// tree, the new revision.
pub fn revisions(repo: &Path, spec: &str) -> Result<(String, Option<String>), String> {
    let or_head = |r: &str| {
        if r.is_empty() {
            "HEAD".to_string()
        } else {
            r.to_string()
        }
    };
    if let Some((a, b)) = spec.split_once("...") {
        let (a, b) = (or_head(a), or_head(b));
        let base = git(repo, &["merge-base", &a, &b])?;
        let base = base.trim();
        // Shown by the name the user gave, not a hash, when the two are the same commit.
        let old = if git(repo, &["rev-parse", &a])?.trim() == base {
            a
        } else {
            base.to_string()
        };
        return Ok((old, Some(b)));
    }
    match spec.split_once("..") {
        Some((a, b)) => Ok((or_head(a), Some(or_head(b)))),
        None => Ok((spec.to_string(), None)),
    }
}
