//! The `sbx` command line. Each subcommand parses its arguments here and hands the work to the
//! library module of its stage.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use termcolor::{ColorChoice, StandardStream};

use crate::check;

const EXAMPLE_POLICY: &str = "\
Example policy (ci-build.yaml):

  version: 1
  extends: [base/no-cloud-metadata.yaml]
  network:
    mode: allowlist
    allow:
      - crates.io:443
      - \"*.github.com:443\"
      - 10.20.0.0/16:5432
      - host: time.example.net
        ports: [123]
        protocol: udp
    deny:
      - 169.254.169.254

The format is specified in docs/policy.md.";

#[derive(Parser)]
#[command(
    name = "sbx",
    version,
    about = "Run a command under a declarative network policy",
    long_about = "Run a command under a declarative network policy.\n\n\
        A policy (YAML) says what a command may reach: nothing, an allowlist of host names, \
        addresses, CIDR blocks, ports and protocols, or everything but a deny list. sbx checks \
        policies, and enforces them so that the command reaches exactly what is allowed.",
    after_help = "Examples:\n  sbx check policies/\n  sbx check --format json policies/ > findings.json\n  sbx schema > policy.schema.json",
    after_long_help = concat!(
        "Examples:\n",
        "  Check every policy in a repository, as CI would:\n",
        "    sbx check policies/\n\n",
        "  Machine-readable findings for a review bot:\n",
        "    sbx check --format json policies/\n\n",
        "  Editor completion and validation (yaml-language-server):\n",
        "    sbx schema > policy.schema.json\n\n",
    ),
)]
struct Cli {
    /// When to colour output: auto (on a terminal), always, never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: Color,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Check policy files for errors and likely mistakes.
    #[command(
        long_about = "Check policy files for errors and likely mistakes.\n\n\
            Reads every file named, and every `*.yaml` / `*.yml` file below every directory \
            named (hidden directories such as .git are skipped), together with the files they \
            extend. Reports every problem in every file, each with file:line:column, the \
            offending value, the reason and, where there is one, the fix.\n\n\
            A file without `network.mode` is accepted when another checked file extends it \
            (a base file); otherwise it is an error.\n\n\
            Exit status: 0 when there are no errors (and, with --deny-warnings, no warnings); \
            1 otherwise; 2 for a usage error.",
        after_help = EXAMPLE_POLICY,
        after_long_help = concat!(
            "Examples:\n",
            "  sbx check policies/\n",
            "  sbx check --deny-warnings policies/ci-build.yaml\n",
            "  sbx check --format json policies/ | jq '.[] | select(.severity == \"error\")'\n\n",
            "Warnings (likely mistakes): duplicate-entry, shadowed-by-deny, wildcard-public-suffix, \n",
            "ipv4-only, empty-allowlist. See docs/policy.md.\n",
        ),
    )]
    Check {
        /// Policy files, or directories to search for them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,

        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: check::Format,

        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },

    /// Print the JSON Schema of the policy format.
    #[command(
        long_about = "Print the JSON Schema (draft 2020-12) of the policy format on \
        stdout.\n\n\
        Editors that speak yaml-language-server complete and validate policies with it: save \
        it and add `# yaml-language-server: $schema=path/to/schema.json` as a policy's first \
        line. The repository keeps a copy at policies/schema.json."
    )]
    Schema,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Auto if io::IsTerminal::is_terminal(&io::stderr()) => ColorChoice::Auto,
        Color::Auto | Color::Never => ColorChoice::Never,
        Color::Always => ColorChoice::Always,
    };
    let mut stderr = StandardStream::stderr(color);
    let result = match cli.command {
        Command::Check {
            paths,
            format,
            deny_warnings,
        } => check::report(&paths, format, &mut stderr, &mut io::stdout().lock()).map(|o| {
            if o.errors > 0 || (deny_warnings && o.warnings > 0) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }),
        Command::Schema => {
            let schema = crate::policy::schema::schema();
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &schema)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(out))
                .map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        // A closed pipe (`sbx check … | head`) is not an error worth a message.
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = writeln!(stderr, "error: {e}");
        }
        ExitCode::FAILURE
    })
}
