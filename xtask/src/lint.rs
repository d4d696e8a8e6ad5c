//! `cargo xtask lint`: the stages of sbx-cli import only downward. Each top-level module of
//! sbx-cli/src has a rank; a module may name (`crate::x`) only modules of lower rank, never one
//! above it (upward) nor another of its own rank (sideways).

use std::path::Path;

/// Lowest first. A new module needs a line here: where it sits is a design decision.
const RANKS: &[(&str, u8)] = &[
    ("sys", 0),
    ("diag", 0),
    ("policy", 1),
    ("resolve", 2),
    ("plan", 3),
    ("state", 3),
    ("backend", 4),
    ("sandbox", 5),
    ("check", 6),
    ("doctor", 6),
    ("export", 6),
    ("review", 6),
    ("learn", 6),
    ("cli", 7),
];

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The modules `source` names as `crate::NAME`, with the line of each, comments left out.
fn named_modules(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
        }
    }
    found
}

/// What `module`'s `source` imports against the ranks, one message per offending line.
fn check_source(module: &str, file: &str, source: &str) -> Vec<String> {
    let Some(own) = rank(module) else {
        return vec![format!(
            "{file}: module `{module}` has no rank; give it one in xtask/src/lint.rs"
        )];
    };
    named_modules(source)
        .into_iter()
        .filter(|(_, name)| name != module)
        .filter_map(|(line, name)| {
            let Some(theirs) = rank(&name) else {
                return Some(format!(
                    "{file}:{line}: `crate::{name}` has no rank; give it one in xtask/src/lint.rs"
                ));
            };
            let how = if theirs > own {
                "upward"
            } else if theirs == own {
                "sideways"
            } else {
                return None;
            };
            Some(format!(
                "{file}:{line}: `{module}` imports `{name}` {how}: a stage may only use the \
                 stages below it (move what both need below both, or pass it in)"
            ))
        })
        .collect()
}

pub fn run(root: &Path) -> Result<(), String> {
    let src = root.join("sbx-cli/src");
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        let relative = path.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("");
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let source =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = format!("sbx-cli/src/{}", relative.display());
        problems.extend(check_source(module, &file, &source));
    }
    if problems.is_empty() {
        eprintln!("lint: every stage imports only the stages below it");
        Ok(())
    } else {
        Err(format!("lint: {}", problems.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_imports_pass_and_upward_or_sideways_ones_fail() {
        let ok = "use crate::sys::Step;\nuse crate::plan::Plan; // crate::sandbox in a comment\n";
        assert!(check_source("backend", "b.rs", ok).is_empty());
        let up = "use crate::sys::Step;\nfn f() { crate::sandbox::apply(); }\n";
        let problems = check_source("backend", "b.rs", up);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("b.rs:2: `backend` imports `sandbox` upward"));
        let sideways = check_source("check", "c.rs", "use crate::doctor;\n");
        assert!(sideways[0].contains("sideways"), "{sideways:?}");
        let unranked = check_source("backend", "b.rs", "use crate::newthing::X;\n");
        assert!(unranked[0].contains("has no rank"), "{unranked:?}");
    }
}
