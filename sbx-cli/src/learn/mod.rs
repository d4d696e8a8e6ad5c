//! `sbx learn`: run a command with the network open (less what a base policy denies), watch what
//! it asks of DNS and what it connects to, and write the allowlist policy that admits exactly
//! that ([`synth`]).

pub mod synth;

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use termcolor::WriteColor;

use crate::backend::{Choice, Observe, Verdict};
use crate::diag::{self, Pos, Span};
use crate::plan::Plan;
use crate::policy::{Loader, Mode, Origin, Policy, Rule, Sourced};
use crate::resolve::Resolver;
use crate::sandbox::{self, ApplyError};
use synth::Used;

pub struct Options {
    pub backend: Choice,
    /// Who the command runs as (`--user`), as for `sbx apply`.
    pub user: Option<String>,
    /// The policy whose deny list and DNS settings apply while learning, and that the learned
    /// file extends.
    pub base: Option<PathBuf>,
    /// Where to write the learned policy; stdout when `None`.
    pub output: Option<PathBuf>,
    pub wildcards: Option<usize>,
    pub command: Vec<OsString>,
}

/// Runs the command, writes what it used as a policy, and returns the command's exit status;
/// 1 for a base policy with errors or a command sbx refuses to run, 125 when sbx fails (as
/// `sbx apply`).
pub fn learn(options: Options, stderr: &mut dyn WriteColor) -> io::Result<ExitCode> {
    let mut loader = Loader::new();
    let Some((base, extends)) = base(&options, &mut loader, stderr)? else {
        return Ok(ExitCode::FAILURE);
    };
    let allow: Vec<Rule> = base.allow.clone();
    let Some((plan, resolver)) = plan(base, &loader, stderr)? else {
        return Ok(ExitCode::FAILURE);
    };
    let run = sandbox::run(
        &plan,
        resolver,
        &sandbox::Options {
            backend: options.backend,
            user: options.user.clone(),
            dry_run: false,
            events: None,
            observe: Observe {
                audit: false,
                allowed: true,
                dns: true,
            },
            record_dns: true,
            output: options.output.clone(),
            stdout_to_stderr: options.output.is_none(),
            command: options.command.clone(),
        },
    );
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            writeln!(stderr, "error: {e}")?;
            return Ok(ExitCode::from(exit_status(&e)));
        }
    };
    if run.events.lost > 0 {
        writeln!(
            stderr,
            "warning: at least {} events were lost before sbx saw them; the policy may lack \
             destinations",
            run.events.lost
        )?;
    }
    if run.events.not_kept > 0 {
        writeln!(
            stderr,
            "warning: only the first {} events were kept; the policy may lack destinations \
             first used after them",
            crate::backend::EVENTS_KEPT
        )?;
    }
    let used: Vec<Used> = run
        .events
        .items
        .iter()
        .filter(|e| e.verdict == Verdict::Allowed)
        .filter_map(|e| {
            Some(Used {
                destination: e.destination?,
                port: e.port,
                protocol: e.protocol?,
                command: e.command.clone(),
                time: e.time,
                udp_connect: e.protocol == Some(17) && matches!(e.hook, "connect4" | "connect6"),
            })
        })
        .collect();
    let text = synth::synthesise(
        &run.asked.unwrap_or_default(),
        &used,
        &synth::Options {
            base: extends
                .as_ref()
                .map(|path| (allow.as_slice(), path.clone())),
            wildcards: options.wildcards,
        },
    );
    let written = match run.output {
        Some(mut out) => out.write_whole(text.as_bytes()).map_err(|e| e.to_string()),
        None => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("write the policy to stdout: {e}"))
        }
    };
    if let Err(why) = written {
        writeln!(stderr, "error: {why}")?;
        return Ok(ExitCode::from(125));
    }
    Ok(ExitCode::from(u8::try_from(run.status).unwrap_or(u8::MAX)))
}

fn exit_status(e: &ApplyError) -> u8 {
    match e {
        ApplyError::Refused(_) => 1,
        ApplyError::CannotRun { status, .. } => *status,
        ApplyError::System(_) => 125,
    }
}

/// Where a value sbx set itself comes from, for the plan's provenance: the top of `path`.
fn nowhere(file: crate::diag::FileId, path: &str) -> Origin {
    let start = Pos {
        line: 1,
        column: 1,
        offset: 0,
    };
    Origin {
        file,
        path: Arc::from(path),
        span: Span { start, end: start },
    }
}

/// The policy to learn under (the base, or nothing, in `mode: open`), and the base as the
/// learned file's `extends` names it. A base may leave `mode` out (a file meant to be extended,
/// like `policies/base/no-cloud-metadata.yaml`): the learned file sets it. `None` when the base
/// has errors, which are shown.
fn base(
    options: &Options,
    loader: &mut Loader,
    stderr: &mut dyn WriteColor,
) -> io::Result<Option<(Policy, Option<String>)>> {
    let Some(path) = &options.base else {
        let file = loader.sources.add("sbx learn".into(), String::new());
        let policy = Policy {
            name: "learn".into(),
            description: None,
            mode: Sourced {
                value: Mode::Open,
                origin: nowhere(file, "sbx learn"),
            },
            allow: Vec::new(),
            deny: Vec::new(),
            dns: Default::default(),
            files: Vec::new(),
        };
        return Ok(Some((policy, None)));
    };
    let composed = loader.compose(path);
    diag::render_human(stderr, &loader.sources, loader.diagnostics())?;
    let mut composed = match composed {
        Some(c) if !loader.has_errors() => c,
        _ => {
            writeln!(
                stderr,
                "error: the base policy {} has errors: nothing was run",
                path.display()
            )?;
            return Ok(None);
        }
    };
    let extends = match extends_path(path, options.output.as_deref()) {
        Ok(p) => p,
        Err(why) => {
            writeln!(stderr, "error: --base {}: {why}", path.display())?;
            return Ok(None);
        }
    };
    composed.mode = Some(Sourced {
        value: Mode::Open,
        origin: nowhere(composed.file, &path.display().to_string()),
    });
    Ok(composed.into_policy().map(|p| (p, Some(extends))))
}

/// `base` as a path relative to the directory of `output` (the working directory for stdout),
/// as `extends` takes it: both made absolute, and `..` as often as needed.
fn extends_path(base: &Path, output: Option<&Path>) -> Result<String, String> {
    let base = std::fs::canonicalize(base).map_err(|e| format!("cannot read it: {e}"))?;
    let dir = match output.map(|o| o.parent().unwrap_or(Path::new(""))) {
        Some(dir) if dir.as_os_str().is_empty() => PathBuf::from("."),
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&dir)
        .map_err(|e| format!("the directory of the output, {}: {e}", dir.display()))?;
    let base_parts: Vec<Component> = base.components().collect();
    let dir_parts: Vec<Component> = dir.components().collect();
    let common = base_parts
        .iter()
        .zip(&dir_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in common..dir_parts.len() {
        relative.push("..");
    }
    for part in &base_parts[common..] {
        relative.push(part);
    }
    relative
        .into_os_string()
        .into_string()
        .map_err(|_| "its path is not UTF-8, which a policy file cannot name".to_string())
}

/// The plan to learn under: the base's deny list and DNS settings, `mode: open`.
fn plan(
    mut policy: Policy,
    loader: &Loader,
    stderr: &mut dyn WriteColor,
) -> io::Result<Option<(Plan, Arc<Resolver>)>> {
    // Nothing of the base's allow list applies in open mode; it is only subtracted afterwards.
    policy.allow.clear();
    let resolver = match Resolver::new(&policy.dns) {
        Ok(resolver) => Arc::new(resolver),
        Err(crate::resolve::SetupError(why)) => {
            writeln!(stderr, "error: {why}")?;
            return Ok(None);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (built, problems) = runtime.block_on(crate::plan::build(&policy, resolver.clone()));
    diag::render_human(stderr, &loader.sources, &problems)?;
    Ok(built.map(|plan| (plan, resolver)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_is_relative_to_the_output_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies/base")).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let base = dir.path().join("policies/base/b.yaml");
        std::fs::write(&base, "version: 1\n").unwrap();
        assert_eq!(
            extends_path(&base, Some(&dir.path().join("out/learned.yaml"))).unwrap(),
            "../policies/base/b.yaml"
        );
        assert_eq!(
            extends_path(&base, Some(&dir.path().join("policies/learned.yaml"))).unwrap(),
            "base/b.yaml"
        );
    }
}
