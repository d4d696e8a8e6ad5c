//! The `sbx` command line. Each subcommand parses its arguments here and hands the work to the
//! library module of its stage.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use termcolor::{ColorChoice, StandardStream};

use crate::check;
use crate::diag::{self, Diagnostic};
use crate::export;
use crate::policy::Loader;
use crate::{plan, resolve, review, sandbox};

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
    after_help = "Examples:\n  sbx check policies/\n  sbx plan policies/rust-build.yaml\n  sbx schema > policy.schema.json",
    after_long_help = concat!(
        "Examples:\n",
        "  Check every policy in a repository, as CI would:\n",
        "    sbx check policies/\n\n",
        "  Machine-readable findings for a review bot:\n",
        "    sbx check --format json policies/\n\n",
        "  What a policy will enforce, with its names resolved by sbx:\n",
        "    sbx plan policies/rust-build.yaml\n\n",
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
enum PlanFormat {
    /// For people: rule sets with provenance, resolved names, warnings.
    Text,
    /// The whole plan as one JSON object.
    Json,
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

    /// Resolve a policy's names and print the rules sbx would enforce.
    #[command(
        long_about = "Resolve a policy's names and print the rules sbx would enforce.\n\n\
            sbx expands host names itself, with its own resolver and the servers in \
            `dns.servers` (never the sandboxed command's view of DNS): every name at once, A \
            and AAAA, CNAME chains followed. The plan shows the effective rule sets (protocol, \
            ports, addresses) with the file:line:column each entry came from, the resolved \
            addresses with their TTLs, the names left to sbx's DNS service (wildcards, and in \
            allowlist mode every name), and warnings. This is what a reviewer reads before \
            approving a policy change.\n\n\
            A name in `allow` that does not resolve is an error naming the entry and the cause \
            (NXDOMAIN, SERVFAIL, REFUSED, timeout, no addresses), unless the policy says \
            `dns.on_resolve_failure: warn`.\n\n\
            The output is deterministic: the same policy and the same DNS answers give the \
            same bytes. Exit status: 0 with a plan, 1 when the policy or a name fails.",
        after_help = "Examples:\n  sbx plan policies/rust-build.yaml\n  sbx plan --format json policies/github.yaml | jq '.allow'"
    )]
    Plan {
        /// The policy file.
        #[arg(value_name = "POLICY")]
        policy: PathBuf,

        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },

    /// Write a policy for another engine: Cilium, Kubernetes NetworkPolicy, systemd.
    #[command(
        long_about = "Write a policy for another engine, with the same meaning or a precise \
            refusal: a CiliumNetworkPolicy (or CiliumClusterwideNetworkPolicy), a Kubernetes \
            NetworkPolicy, or a systemd unit drop-in, on stdout.\n\n\
            The export reads the composed policy (after `extends`): names stay names, which \
            Cilium follows with its DNS proxy (`toFQDNs`, and a DNS rule to kube-dns that \
            answers the allowed names only, as sbx's DNS gate does). sbx's `*.example.com` (any \
            depth below, never example.com) is written `**.example.com`, which needs Cilium \
            1.19 or later; --wildcard-depth N writes one pattern per depth for older releases \
            (narrower, with a warning).\n\n\
            Where the engine cannot say what the policy says, sbx refuses with an error naming \
            the entry (file:line:column), or, where the export is narrower than sbx (never \
            wider), warns; warnings are also written as comments into the output. What maps to \
            what: docs/export.md.\n\n\
            Exit status: 0 with every policy exported; 1 otherwise (nothing is written then); 2 \
            for a usage error.",
        after_help = "Examples:\n  sbx export --format cilium --namespace ci --selector app=build policies/rust-build.yaml\n  sbx export --format kubernetes --resolve policies/github.yaml\n  sbx export --format systemd --widen-ports policy.yaml > /etc/systemd/system/job.service.d/sbx.conf"
    )]
    Export {
        /// Policy files; one object each, as YAML documents separated by `---`.
        #[arg(required = true, value_name = "POLICY")]
        policies: Vec<PathBuf>,

        /// The engine to write for.
        #[arg(long, value_enum)]
        format: export::Format,

        #[command(flatten)]
        options: export::Options,

        /// Write names the engine cannot follow as the addresses they have now, resolved by
        /// sbx with the policy's `dns` settings (they go stale).
        #[arg(long)]
        resolve: bool,
    },

    /// Show what access a policy change adds or removes, and whether it widens.
    #[command(
        long_about = "Show what access a policy change adds or removes, after `extends` and \
            merging, and whether it widens.\n\n\
            `sbx diff OLD NEW` compares two policy files. `sbx diff --git REV [PATHS]` compares \
            the policies of two versions of the current repository: every policy that changed, \
            and every policy whose `extends` chain changed (a change to a base file shows in \
            each policy that extends it). REV is `A..B` (two commits), `A...B` (B against its \
            merge base with A, as a pull request is reviewed), `A..` (A and HEAD) or `A` (A and \
            the working tree). PATHS (default: the whole repository) limit the policies compared.\n\n\
            Each line is an entry or setting added (+), removed (-) or changed (~), with the \
            file:line:column it comes from on its side (a `dns` setting changed back to its \
            default: where the old side set it; a default server: none). A change widens when the new policy \
            admits a connection the old one did not: a mode that reaches more (none < allowlist \
            < open), an allow entry (or the ports of one) no old entry held, a deny entry \
            dropped where the policy can reach it, a DNS server added, a longer `dns.grace`.\n\n\
            Offline by default: policies are compared by what they say (names, wildcards, \
            addresses, blocks, ports, protocols), not by what names resolve to. With --resolve, \
            each side's host names are resolved by sbx (with that side's `dns` settings, as \
            `sbx plan` does), and every address they resolve to is compared as a destination \
            of its own (`address` lines, with the names that led to it): a block that now \
            covers an allowed name's address, or a deny entry removed from under it, shows, and \
            a removed deny entry that an allowed name's addresses meet now widens (two names \
            that share an address). Answers only add to what widens: where no allowed name \
            resolves into a removed deny entry now, a note says so, and it still widens, since \
            whoever answers for a name decides where it resolves next. Wildcards cannot be \
            resolved ahead of time and are compared by name.\n\n\
            Exit status: 0 when no access widened, 1 when some did (a review gate), 2 for errors \
            (a policy that does not load, a git problem, no DNS server to ask with --resolve, a \
            usage error).",
        after_help = "Examples:\n  sbx diff old/github.yaml policies/github.yaml\n  sbx diff --git origin/main...HEAD policies/\n  sbx diff --git HEAD --format markdown > comment.md\n  sbx diff --resolve --git origin/main...HEAD policies/"
    )]
    Diff {
        /// Compare the policies of two revisions of the current git repository (see above).
        #[arg(long, value_name = "REV")]
        git: Option<String>,

        /// Without --git: the old and the new policy file. With --git: the files or directories
        /// to compare.
        #[arg(value_name = "OLD NEW | PATHS")]
        paths: Vec<PathBuf>,

        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: review::Format,

        /// Resolve each side's host names (with its `dns` settings) and compare the addresses
        /// they resolve to as well.
        #[arg(long)]
        resolve: bool,
    },

    /// Say whether a policy lets the command reach a destination, and which rule decides.
    #[command(
        long_about = "Say whether a policy lets the command reach a destination, and which \
            rule decides it, with the file:line:column it was written at.\n\n\
            DEST is a host name or an IP address, optionally with `:PORT` (an IPv6 address \
            with a port in brackets: `[2001:db8::1]:443`) and `/PROTO` (`tcp`, `udp`, `any`). A \
            port without a protocol means TCP; no port asks about every port.\n\n\
            Names are matched exactly as sbx's DNS service matches the questions of the \
            command: `*.example.com` covers every name below example.com, at any depth, never \
            example.com itself. Deny wins over allow; in allowlist mode a name that a deny \
            entry names is refused by the DNS service on every port. The host's loopback is \
            reachable only through an entry that names it, in every mode. Offline by default: \
            names are judged by name and addresses by address; what a name resolves to is not \
            looked up.\n\n\
            With --resolve, sbx resolves the policy's host names and a DEST name (with the \
            policy's `dns` settings, as `sbx plan` does) and judges a name by each address it \
            has now too, as the sandbox judges a connection there: an address in a denied block, \
            or an address of a denied name, is denied (deny wins over the name's allow entry); \
            an address in an allowed block is reachable by address even where the DNS service \
            refuses the name. The verdict is then that of the addresses: allowed when every \
            one is, denied when none is. An address DEST is judged with the names that resolve \
            to it. The answers are those of now: whoever answers for a name decides where it \
            resolves next, so `sbx test` stays offline.\n\n\
            Exit status: 0 allowed, 1 denied (or only partly allowed), 2 for errors (with \
            --resolve also: no DNS server to ask).",
        after_help = "Examples:\n  sbx explain policies/github.yaml api.github.com:443\n  sbx explain policies/github.yaml gist.github.com:443\n  sbx explain policies/rust-build.yaml 169.254.169.254:80\n  sbx explain ci.yaml ntp.example.net:123/udp\n  sbx explain --resolve policies/github.yaml github.com:443"
    )]
    Explain {
        /// The policy file.
        #[arg(value_name = "POLICY")]
        policy: PathBuf,

        /// The destination: NAME or ADDRESS, with optional :PORT and /PROTO.
        #[arg(value_name = "DEST[:PORT][/PROTO]")]
        dest: String,

        /// Resolve names (with the policy's `dns` settings) and judge a name by its addresses
        /// too.
        #[arg(long)]
        resolve: bool,
    },

    /// Run the expectations kept beside policies (NAME.test.yaml).
    #[command(
        long_about = "Run the expectations kept beside policies, offline.\n\n\
            NAME.test.yaml tests the policy NAME.yaml beside it (or the file its `policy` key \
            names, relative to it) with two lists of destinations, written as `sbx explain` \
            takes them: `allow` (each must be allowed, on every port and protocol it names) \
            and `deny` (each must be denied entirely). PATHS are test files, policies (whose \
            test file is run), or directories searched for test files. `sbx check` skips test \
            files when it searches a directory.\n\n\
            A failure is reported like a compiler error: the case, with its file:line:column, \
            and the policy entry that decided. A policy found in a directory with no test file \
            is a warning (an error with --deny-untested); base files, without a mode, are tested \
            through the policies that extend them.\n\n\
            Exit status: 0 when every case holds, 1 otherwise, 2 for a usage error.",
        after_help = "Example (policies/github.test.yaml):\n\n  allow:\n    - github.com:443\n    - api.github.com:443\n  deny:\n    - gist.github.com:443\n    - 169.254.169.254:80\n\nExamples:\n  sbx test policies/\n  sbx test --deny-untested policies/\n  sbx test policies/github.yaml"
    )]
    Test {
        /// Test files, policies, or directories to search.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,

        /// Fail (exit 1) when a policy in a searched directory has no test file.
        #[arg(long)]
        deny_untested: bool,
    },

    /// Run a command under a policy.
    #[command(
        long_about = "Run a command under a policy: it reaches exactly what the policy allows, \
            and the machine is left as it was.\n\n\
            sbx resolves the policy's names (as `sbx plan` shows), builds the sandbox, runs the \
            command in it, and removes the sandbox when the command ends. The command keeps \
            sbx's standard input, output and error (a terminal too, so `-- bash` is an \
            interactive shell), its environment and working directory. sbx's exit status is the \
            command's; a command killed by signal N gives 128+N. SIGINT, SIGTERM, SIGHUP and \
            SIGQUIT sent to sbx are passed to the command.\n\n\
            Two backends enforce the same policy with the same verdicts (--backend; `auto`, the \
            default, takes eBPF where `sbx doctor` finds it usable, else nftables). eBPF: the \
            command stays in the host's network stack, in a cgroup of its own, where sbx's \
            programs judge every connect, send, bind and socket, and every packet coming in. \
            nftables: the command gets a network namespace of its own, linked to the host by a \
            veth pair with NAT; the rules live in an nftables table on the host side, where the \
            command cannot reach them. In allowlist mode the command's DNS goes to sbx's own DNS \
            service, which answers only the names the policy allows.\n\n\
            sbx needs root. The command runs as the user who ran sudo (SUDO_UID), as --user, \
            or else as root without the capabilities that could undo the sandbox (NET_ADMIN, \
            SYS_ADMIN, BPF, NET_RAW, SYS_MODULE, SYS_PTRACE, …) and with no_new_privs. The \
            command cannot outlive sbx: if sbx dies, so does everything it started.\n\n\
            Exit status: the command's; 1 when the policy or a name fails, or sbx refuses to \
            run it; 125 when sbx cannot set up the sandbox; 126 when the command is not executable, \
            127 when it is not found.",
        after_help = "Examples:\n  sudo sbx apply policies/rust-build.yaml -- cargo build\n  sudo sbx apply policies/deny-all.yaml -- bash\n  sbx apply --dry-run policies/github.yaml"
    )]
    Apply {
        /// The policy file.
        #[arg(value_name = "POLICY")]
        policy: PathBuf,

        /// Enforcement backend.
        #[arg(long, value_enum, default_value = "auto")]
        backend: crate::backend::Choice,

        /// Run the command as this user (name or uid) instead of the sudo user or root.
        #[arg(long, value_name = "USER")]
        user: Option<String>,

        /// Print the backend `--backend` picks and what it would apply (eBPF: the programs and
        /// the policy's map entries; nftables: the namespace, addresses and ruleset), and change
        /// nothing.
        #[arg(long)]
        dry_run: bool,

        /// Write every denial (pid, command, destination, port, protocol, hook, verdict, audit,
        /// time) to FILE as JSON lines, on both backends (eBPF: what its programs refused;
        /// nftables: the packets its rules dropped; and the names sbx's DNS service refused).
        /// FILE is opened before the command starts (under sudo with the sudo user's rights),
        /// never through a symbolic link.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,

        /// With --events: record allowed connections too (`"verdict": "allowed"`): each TCP
        /// connect and UDP connect, and each UDP send to a peer that the socket's port has not
        /// sent to in the last two minutes (eBPF, with the process); each new connection leaving
        /// the sandbox (nftables). Not the command's own loopback traffic, nor DNS to sbx's
        /// service.
        #[arg(long, requires = "events")]
        events_allowed: bool,

        /// Try the policy without enforcing it: nothing the policy would refuse is refused
        /// (connects and sends on both backends; names outside the policy are answered by sbx's
        /// DNS service from the upstream), and each would-be denial is reported as a denial is
        /// (the stderr summary says "would have denied"; --events lines have "audit": true).
        /// Audit loosens the policy only: sbx's own hardening stays in force (the read-only
        /// /proc/sys and kernel file systems, hidden state, the system-call filter, dropped
        /// capabilities, the PID and mount namespaces; on eBPF also the refusal of raw, packet
        /// and ICMP sockets and of binds onto others' ports, and inbound filtering on both).
        #[arg(long)]
        audit: bool,

        /// The command and its arguments, after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },

    /// Remove what sandboxes of sbx processes that died left behind.
    #[command(
        long_about = "Remove what sandboxes of sbx processes that died (SIGKILL, say) \
        left behind: nftables tables, links, cgroups, eBPF map entries, state files, and the IP \
        forwarding sysctls sbx turned on. Sandboxes of live sbx processes are never touched. \
        Every `sbx apply` does the same before it starts, so this is only needed to tidy up \
        sooner.\n\n\
        With --all, and when no sandbox is live, also removes what the eBPF backend keeps \
        between runs: its programs and maps, pinned in the bpf file system sbx mounts at \
        /run/sbx/bpf, and the mount itself. The next eBPF sandbox loads them again."
    )]
    Gc {
        /// Also remove the eBPF programs and maps kept between runs (when no sandbox is live).
        #[arg(long)]
        all: bool,
    },

    /// Check whether each backend can run on this machine, and show sbx's state on it.
    #[command(
        long_about = "Check whether each backend can run on this machine and, if not, \
        why: privileges, the cgroup v2 mount, cgroup v1 net_cls/net_prio hierarchies (which \
        switch cgroup v2 socket matching off), the bpf system call, kernel BTF, network \
        namespaces, nftables. Says what --backend auto would choose, and lists what sbx keeps \
        on the host: sandbox slots and the eBPF programs and maps pinned between runs.\n\n\
        Exit status: 0 when some backend can run, 1 otherwise."
    )]
    Doctor,

    /// Run a command with the network open, and write the policy that allows what it used.
    #[command(
        long_about = "Run a command with the network open, watch every DNS question it asks \
            and every connection it makes, and write a policy (version 1, mode: allowlist) that \
            allows exactly what it used: a destination it reached through a name it resolved is \
            written as that name (`name:port`; the long form for UDP or several ports), an \
            address only where no name led to it; its own loopback, and DNS (which sbx's DNS \
            service answers under any allowlist), are left out. Each entry has a comment: its \
            connections, the processes that made them (eBPF backend only), and its first use (1: \
            the destination reached first). Names asked and never connected to are listed as \
            comments only. The file is sorted: learning the same run twice gives the same \
            bytes. Review it before use: everything in it is what the command asked for. \
            Without -o the policy goes to stdout after the command has ended, and the \
            command's own stdout goes to stderr, so that nothing it prints becomes part of \
            the policy (`sbx learn -- make > policy.yaml` keeps make's output on the terminal).\n\n\
            With --base, the base's deny list and dns settings apply while learning, and the \
            learned file extends the base (its path relative to FILE's directory, or to the \
            working directory for stdout) and repeats nothing the base allows. The command runs \
            as under `sbx apply` (see `sbx apply --help`), with the backend's enforcement of the \
            open mode; FILE is opened before the command starts, as `apply --events` opens its \
            file (under sudo with the sudo user's rights, never through a symbolic link).\n\n\
            Exit status: the command's; 1 when the base has errors or sbx refuses to run the \
            command; 125 when sbx cannot set up the sandbox or write FILE; 126 and 127 as for \
            `sbx apply`.",
        after_help = "Examples:\n  sudo sbx learn -o build.yaml -- make\n  \
            sudo sbx learn --base policies/base/no-cloud-metadata.yaml -o policies/ci.yaml -- ./ci.sh\n  \
            sudo sbx learn --wildcards 3 -o npm.yaml -- npm ci\n\n\
            Then: sbx check build.yaml, sudo sbx apply --audit build.yaml -- make, and sudo sbx \
            apply build.yaml -- make."
    )]
    Learn {
        /// Enforcement backend (the process of each connection is known on eBPF only).
        #[arg(long, value_enum, default_value = "auto")]
        backend: crate::backend::Choice,

        /// Run the command as this user (name or uid) instead of the sudo user or root (a
        /// learning run has the open network: run untrusted jobs as an unprivileged user).
        #[arg(long, value_name = "USER")]
        user: Option<String>,

        /// A policy whose deny list and dns settings apply while learning, and which the
        /// learned policy extends (a base without `mode` is fine).
        #[arg(long, value_name = "POLICY")]
        base: Option<PathBuf>,

        /// Write the policy to FILE instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,

        /// Propose `*.parent` where N or more names directly below `parent` were used (never
        /// directly under a public suffix; `parent` itself keeps its own entry).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        wildcards: Option<u32>,

        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },

    #[command(name = "__init", hide = true)]
    Init {
        #[arg(long)]
        resolv_conf: Option<PathBuf>,
        #[arg(long)]
        host_network: bool,
        #[arg(long)]
        uid: Option<u32>,
        #[arg(long)]
        gid: Option<u32>,
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
        #[arg(long)]
        cwd: PathBuf,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
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

    /// Print a shell completion script.
    #[command(long_about = "Print the completion script for SHELL on stdout.\n\n\
        bash: `sbx completions bash > ~/.local/share/bash-completion/completions/sbx` \
        (or `source <(sbx completions bash)` in ~/.bashrc).\n\
        zsh: `sbx completions zsh > ~/.zfunc/_sbx`, with ~/.zfunc in $fpath.\n\
        fish: `sbx completions fish > ~/.config/fish/completions/sbx.fish`.")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Write the manual pages: sbx(1) and one per subcommand.
    #[command(
        long_about = "Write the manual pages, in roff: sbx(1) and sbx-SUBCOMMAND(1) for each \
        subcommand, into DIR (created if missing). Read one with `man DIR/sbx-apply.1`, or \
        install them under a man1 directory of MANPATH."
    )]
    Man {
        /// Where to write the pages.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// glibc hands large freed blocks back to the kernel at once, and the next allocation faults
/// fresh zeroed pages in again. A policy's stages each build and drop structures of megabytes
/// (10,000 entries: YAML tree, rules, plan), and on a VM those page faults were a quarter of the
/// Policy stage. sbx runs for one command; it keeps what it freed for reuse instead.
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Exits with clap's message for a command line it cannot parse, and the hint that most such
/// lines of `sbx apply` need: the command goes after `--`.
fn usage_error(e: clap::Error) -> ! {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let apply = args.iter().skip(1).any(|a| a == "apply");
    if apply
        && e.kind() == clap::error::ErrorKind::UnknownArgument
        && !args.iter().any(|a| a == "--")
    {
        let _ = e.print();
        eprintln!(
            "\nhint: put the command after `--`, so that its arguments are not taken for sbx's:\n      \
             sbx apply POLICY -- CMD [ARGS]..."
        );
        std::process::exit(2);
    }
    e.exit()
}

pub fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
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
        Command::Plan { policy, format } => plan(&policy, format, &mut stderr),
        Command::Export {
            policies,
            format,
            options,
            resolve,
        } => export_policies(&policies, format, &options, resolve, &mut stderr),
        Command::Apply {
            policy,
            backend,
            user,
            dry_run,
            events,
            events_allowed,
            audit,
            command,
        } => apply(
            &policy,
            sandbox::Options {
                backend,
                user,
                dry_run,
                events,
                observe: crate::backend::Observe {
                    allowed: events_allowed,
                    audit,
                    ..Default::default()
                },
                record_dns: false,
                output: None,
                stdout_to_stderr: false,
                command,
            },
            &mut stderr,
        ),
        Command::Diff {
            git,
            paths,
            format,
            resolve,
        } => diff(git.as_deref(), &paths, resolve, format, color, &mut stderr),
        Command::Explain {
            policy,
            dest,
            resolve,
        } => explain(&policy, &dest, resolve, &mut stderr),
        Command::Test {
            paths,
            deny_untested,
        } => review::test(&paths, &mut stderr).map(|o| {
            if o.passed() && (!deny_untested || o.untested.is_empty()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Command::Gc { all } => gc(all, &mut stderr),
        Command::Learn {
            backend,
            user,
            base,
            output,
            wildcards,
            command,
        } => crate::learn::learn(
            crate::learn::Options {
                backend,
                user,
                base,
                output,
                wildcards: wildcards.map(|n| n as usize),
                command,
            },
            &mut stderr,
        ),
        Command::Doctor => {
            let (text, ok) = crate::doctor::report();
            print!("{text}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Init {
            resolv_conf,
            host_network,
            uid,
            gid,
            groups,
            cwd,
            command,
        } => {
            let run_as = match (uid, gid) {
                (Some(uid), Some(gid)) => sandbox::init::RunAs::User { uid, gid, groups },
                _ => sandbox::init::RunAs::Root,
            };
            sandbox::init::run(sandbox::init::InitArgs {
                resolv_conf,
                host_network,
                run_as,
                cwd,
                command,
            })
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sbx", &mut io::stdout().lock());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man_pages(&dir).map(|()| ExitCode::SUCCESS),
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

/// Frees `value` on another thread: a policy of 10,000 entries takes half a millisecond to
/// free, which the sandbox's start-up need not wait for.
fn drop_in_background<T: Send + 'static>(value: T) {
    if let Err(e) = std::thread::Builder::new().spawn(move || drop(value)) {
        // No thread to spare: then it is freed here, only later.
        drop(e);
    }
}

/// The last line when a policy gives no plan, as `sbx check` ends with its counts.
fn no_plan_summary(
    stderr: &mut StandardStream,
    path: &std::path::Path,
    diagnostics: &[Diagnostic],
) -> io::Result<()> {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    writeln!(
        stderr,
        "no plan for {}: {}, {}",
        path.display(),
        check::plural(errors, "error"),
        check::plural(diagnostics.len() - errors, "warning")
    )
}

/// Loads, composes and plans a policy (`plan::load`), reporting every problem on stderr.
/// `None` when it fails.
fn load_plan(
    path: &std::path::Path,
    stderr: &mut StandardStream,
) -> io::Result<Option<(plan::Plan, std::sync::Arc<resolve::Resolver>)>> {
    let loaded = plan::load(path)?;
    if let Some(why) = &loaded.setup_error {
        writeln!(stderr, "error: {why}")?;
        return Ok(None);
    }
    diag::render_human(stderr, &loaded.loader.sources, &loaded.diagnostics)?;
    let Some(built) = loaded.built else {
        no_plan_summary(stderr, path, &loaded.diagnostics)?;
        return Ok(None);
    };
    drop_in_background((loaded.policy, loaded.loader));
    Ok(Some(built))
}

fn plan(
    path: &std::path::Path,
    format: PlanFormat,
    stderr: &mut StandardStream,
) -> io::Result<ExitCode> {
    let Some((built, _)) = load_plan(path, stderr)? else {
        return Ok(ExitCode::FAILURE);
    };
    // Stdout is line-buffered; pretty JSON of a large plan would cost a write per line.
    let mut out = io::BufWriter::new(io::stdout().lock());
    match format {
        PlanFormat::Text => out.write_all(plan::render_text(&built).as_bytes())?,
        PlanFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &built)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Exports every policy, or writes nothing: a pipe into `kubectl apply` must not get half of
/// what was asked for.
fn export_policies(
    paths: &[PathBuf],
    format: export::Format,
    options: &export::Options,
    resolve: bool,
    stderr: &mut StandardStream,
) -> io::Result<ExitCode> {
    if paths.len() > 1 && (options.name.is_some() || format == export::Format::Systemd) {
        let what = if options.name.is_some() {
            "--name"
        } else {
            "--format systemd"
        };
        writeln!(
            stderr,
            "error: {what} takes one policy, not {}",
            paths.len()
        )?;
        return Ok(ExitCode::from(2));
    }
    let mut documents = Vec::new();
    let mut failed = false;
    for path in paths {
        let mut loader = Loader::new();
        let policy = loader.load(path);
        let mut diagnostics: Vec<Diagnostic> = loader.diagnostics().to_vec();
        let exported = match &policy {
            None => None,
            Some(policy) => {
                let resolved = if resolve {
                    match resolve_names(policy) {
                        Ok(resolved) => Some(resolved),
                        Err(why) => {
                            writeln!(stderr, "error: {why}")?;
                            failed = true;
                            continue;
                        }
                    }
                } else {
                    None
                };
                match export::export(policy, format, options, resolved.as_ref()) {
                    Ok(exported) => {
                        diagnostics.extend(exported.warnings);
                        Some(exported.text)
                    }
                    Err(problems) => {
                        diagnostics.extend(problems);
                        None
                    }
                }
            }
        };
        diag::render_human(stderr, &loader.sources, &diagnostics)?;
        match exported {
            Some(text) => documents.push(text),
            None => {
                failed = true;
                let errors = diagnostics.iter().filter(|d| d.is_error()).count();
                writeln!(
                    stderr,
                    "no export of {}: {}, {}",
                    path.display(),
                    check::plural(errors, "error"),
                    check::plural(diagnostics.len() - errors, "warning")
                )?;
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    let mut out = io::stdout().lock();
    out.write_all(documents.join("---\n").as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Every host name of the policy with the addresses sbx's resolver gives it now.
fn resolve_names(policy: &crate::policy::Policy) -> Result<export::Resolved, String> {
    let answers = resolve::resolve_once(&policy.dns, export::names_to_resolve(policy))?;
    Ok(answers
        .into_iter()
        .map(|(name, answer)| {
            let addresses = answer
                .map(|a| a.addresses.iter().map(|a| a.ip).collect())
                .map_err(|failure| failure.to_string());
            (name, addresses)
        })
        .collect())
}

fn apply(
    path: &std::path::Path,
    options: sandbox::Options,
    stderr: &mut StandardStream,
) -> io::Result<ExitCode> {
    let Some((built, resolver)) = load_plan(path, stderr)? else {
        return Ok(ExitCode::FAILURE);
    };
    let result = sandbox::apply(&built, resolver, &options);
    // sbx exits next: freeing the plan entry by entry would only delay that.
    std::mem::forget(built);
    match result {
        Ok(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))),
        Err(e) => {
            writeln!(stderr, "error: {e}")?;
            Ok(ExitCode::from(match e {
                sandbox::ApplyError::Refused(_) => 1,
                sandbox::ApplyError::CannotRun { status, .. } => status,
                sandbox::ApplyError::System(_) => 125,
            }))
        }
    }
}

fn diff(
    git: Option<&str>,
    paths: &[PathBuf],
    resolve: bool,
    format: review::Format,
    color: ColorChoice,
    stderr: &mut StandardStream,
) -> io::Result<ExitCode> {
    const ERRORS: u8 = 2;
    let diffs = match (git, paths) {
        (Some(spec), _) => {
            review::diff_git(&std::env::current_dir()?, spec, paths, resolve, stderr)?
        }
        (None, [old, new]) => review::diff_files(old, new, resolve, stderr)?,
        (None, _) => {
            writeln!(
                stderr,
                "error: give two policy files (`sbx diff OLD NEW`), or `--git REV [PATHS]`"
            )?;
            return Ok(ExitCode::from(ERRORS));
        }
    };
    let diffs = match diffs {
        Ok(Some(diffs)) => diffs,
        Ok(None) => return Ok(ExitCode::from(ERRORS)),
        Err(why) => {
            writeln!(stderr, "error: {why}")?;
            return Ok(ExitCode::from(ERRORS));
        }
    };
    match format {
        review::Format::Human => {
            let color = if io::IsTerminal::is_terminal(&io::stdout()) {
                color
            } else if color == ColorChoice::Always {
                ColorChoice::Always
            } else {
                ColorChoice::Never
            };
            let mut out = StandardStream::stdout(color);
            review::render::human(&mut out, &diffs)?;
        }
        review::Format::Markdown => review::render::markdown(&mut io::stdout().lock(), &diffs)?,
        review::Format::Json => review::render::json(&mut io::stdout().lock(), &diffs)?,
    }
    Ok(if diffs.iter().any(|d| d.widened) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(
    policy: &std::path::Path,
    dest: &str,
    resolve: bool,
    stderr: &mut StandardStream,
) -> io::Result<ExitCode> {
    let query = match review::explain::Query::parse(dest) {
        Ok(query) => query,
        Err(why) => {
            writeln!(stderr, "error: {why}")?;
            return Ok(ExitCode::from(2));
        }
    };
    let Some(policy) = review::load_policy(policy, stderr)? else {
        return Ok(ExitCode::from(2));
    };
    let answers = if resolve {
        let name = match &query.dest {
            review::explain::Dest::Name(name) => Some(name.as_str()),
            review::explain::Dest::Addr(_) => None,
        };
        match review::resolve_names(Some(&policy), name) {
            Ok(answers) => Some(answers),
            Err(why) => {
                writeln!(stderr, "error: {why}")?;
                return Ok(ExitCode::from(2));
            }
        }
    } else {
        None
    };
    let explanation = review::explain::explain_resolved(&policy, &query, answers.as_ref());
    print!("{}", review::explain::render(&explanation, &policy));
    Ok(match explanation.verdict {
        review::explain::Verdict::Allowed => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// sbx(1) and sbx-SUBCOMMAND(1) for each visible subcommand, into `dir`.
fn man_pages(dir: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let command = Cli::command().name("sbx");
    let write = |name: &str, page: clap::Command| -> io::Result<()> {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        std::fs::write(dir.join(format!("{name}.1")), roff)
    };
    write("sbx", command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("sbx-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("sbx {}", sub.get_name()));
        write(&name, page)?;
    }
    Ok(())
}

fn gc(all: bool, stderr: &mut StandardStream) -> io::Result<ExitCode> {
    let report = match sandbox::gc(all) {
        Ok(report) => report,
        Err(e) => {
            writeln!(stderr, "error: {e}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    if report.cleaned.is_empty() {
        writeln!(stderr, "no dead sandboxes")?;
    } else {
        let slots: Vec<String> = report.cleaned.iter().map(u32::to_string).collect();
        writeln!(
            stderr,
            "removed what dead sandboxes left in slots {}",
            slots.join(", ")
        )?;
    }
    match report.pinned_removed {
        Some(true) => writeln!(stderr, "removed sbx's pinned eBPF programs and maps")?,
        Some(false) => writeln!(stderr, "no pinned eBPF programs or maps")?,
        None if all => writeln!(
            stderr,
            "kept the pinned eBPF programs and maps: a live sandbox uses them"
        )?,
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}
