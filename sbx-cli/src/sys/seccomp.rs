//! The system-call filter of the sandboxed command.
//!
//! What it refuses is what would let the command change the sandbox around it, whatever its
//! user: new namespaces (a user namespace gives an unprivileged process every capability over
//! the namespaces it then creates, from which it could mount cgroup2, unshare a network or hide
//! from the cgroup), joining namespaces, every mount call, bpf(2) (a pinned map opened by path
//! needs no capability, only the file's permission), module and kexec loading, and the kernel
//! keyrings (not namespaced: root's keyring is the host root's); typing into the terminal
//! (TIOCSTI); and sockets of families and protocols that no backend judges. The rest of the system-call
//! table is allowed, as in a container runtime's default profile minus what needs capabilities
//! the command does not have anyway.
//!
//! The filter is classic BPF written out here rather than built by a seccomp crate: it is a
//! few dozen instructions, and it must also refuse the x32 system-call numbers (which reach the
//! same kernel functions under other numbers), which the pure-Rust filter compilers do not.

use super::SysError;

/// `clone` and `unshare` flags that create namespaces. `CLONE_NEWTIME` (0x80) is an `unshare`
/// flag only: in `clone` the low byte is the exit signal.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
const CLONE_NEWTIME: u32 = 0x80;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32 system calls are the x86_64 table's numbers with this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// open_tree_attr(2), Linux 6.15: `open_tree` with mount attributes (one number on every
/// architecture; not in the libc crate yet).
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// Refused with EPERM.
const DENIED: &[libc::c_long] = &[
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_bpf,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

// seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the low 32 bits first on little-endian
// machines, which both supported architectures are).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG1_LOW: u32 = 24;
const ARG2_LOW: u32 = 32;
/// Not in the libc crate (asm-generic/ioctls.h).
const TIOCLINUX: u32 = 0x541c;

const LOAD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
#[cfg(target_arch = "x86_64")]
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Places a jump can go to. Classic BPF only jumps forward, so each comes after every jump to it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Label {
    Unshare,
    Clone,
    Ioctl,
    Socket,
    Protocol,
    Allow,
    Eperm,
    Enosys,
    Eafnosupport,
    Eprotonosupport,
    Kill,
}

/// Where a conditional jump goes: the next instruction, or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    At(Label),
}

/// The filter, as instructions whose jumps name labels; `assemble` turns it into offsets.
fn program() -> Vec<(Option<Label>, u16, u32, To, To)> {
    use Label::*;
    use To::{At, Next};
    let mut p = vec![
        (None, LOAD, ARCH, Next, Next),
        // Another architecture's system-call numbers (a 32-bit program through int 0x80) mean
        // other system calls: the process is killed rather than judged by the wrong table.
        (None, JEQ, AUDIT_ARCH, Next, At(Kill)),
        (None, LOAD, NR, Next, Next),
    ];
    #[cfg(target_arch = "x86_64")]
    p.push((None, JGE, X32_SYSCALL_BIT, At(Eperm), Next));
    // clone3 passes its flags in memory, out of a filter's reach: refused as unknown, so that
    // the C library falls back to clone, whose flags the filter reads.
    p.push((None, JEQ, libc::SYS_clone3 as u32, At(Enosys), Next));
    for &nr in DENIED {
        p.push((None, JEQ, nr as u32, At(Eperm), Next));
    }
    p.extend([
        (None, JEQ, libc::SYS_unshare as u32, At(Unshare), Next),
        (None, JEQ, libc::SYS_ioctl as u32, At(Ioctl), Next),
        (None, JEQ, libc::SYS_socket as u32, At(Socket), Next),
        (None, JEQ, libc::SYS_clone as u32, At(Clone), At(Allow)),
        (Some(Unshare), LOAD, ARG0_LOW, Next, Next),
        (
            None,
            JSET,
            NAMESPACE_FLAGS | CLONE_NEWTIME,
            At(Eperm),
            At(Allow),
        ),
        (Some(Clone), LOAD, ARG0_LOW, Next, Next),
        (None, JSET, NAMESPACE_FLAGS, At(Eperm), At(Allow)),
        // Typing into the terminal the command shares with the shell that started sbx: what it
        // types runs outside the sandbox once sbx exits (TIOCSTI; TIOCLINUX can paste too).
        (Some(Ioctl), LOAD, ARG1_LOW, Next, Next),
        (None, JEQ, libc::TIOCSTI as u32, At(Eperm), Next),
        (None, JEQ, TIOCLINUX, At(Eperm), At(Allow)),
        // Socket families the backends judge, and protocols they judge: UDP-Lite, SCTP, DCCP
        // pass the eBPF hooks by, and AF_VSOCK (to the hypervisor) leaves through no network
        // namespace. Other families are "not supported", as on a kernel without them.
        (Some(Socket), LOAD, ARG0_LOW, Next, Next),
        (None, JEQ, libc::AF_UNIX as u32, At(Allow), Next),
        (None, JEQ, libc::AF_NETLINK as u32, At(Allow), Next),
        (None, JEQ, libc::AF_INET as u32, At(Protocol), Next),
        (
            None,
            JEQ,
            libc::AF_INET6 as u32,
            At(Protocol),
            At(Eafnosupport),
        ),
        (Some(Protocol), LOAD, ARG2_LOW, Next, Next),
        (None, JEQ, 0, At(Allow), Next),
        (None, JEQ, libc::IPPROTO_TCP as u32, At(Allow), Next),
        (None, JEQ, libc::IPPROTO_UDP as u32, At(Allow), Next),
        (None, JEQ, libc::IPPROTO_MPTCP as u32, At(Allow), Next),
        (None, JEQ, libc::IPPROTO_ICMP as u32, At(Allow), Next),
        (
            None,
            JEQ,
            libc::IPPROTO_ICMPV6 as u32,
            At(Allow),
            At(Eprotonosupport),
        ),
        (Some(Allow), RET, libc::SECCOMP_RET_ALLOW, Next, Next),
        (
            Some(Eperm),
            RET,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            Next,
            Next,
        ),
        (
            Some(Eafnosupport),
            RET,
            libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32,
            Next,
            Next,
        ),
        (
            Some(Eprotonosupport),
            RET,
            libc::SECCOMP_RET_ERRNO | libc::EPROTONOSUPPORT as u32,
            Next,
            Next,
        ),
        (
            Some(Enosys),
            RET,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            Next,
            Next,
        ),
        (Some(Kill), RET, libc::SECCOMP_RET_KILL_PROCESS, Next, Next),
    ]);
    p
}

fn assemble(program: &[(Option<Label>, u16, u32, To, To)]) -> Vec<libc::sock_filter> {
    let at = |label: Label| {
        program
            .iter()
            .position(|(l, ..)| *l == Some(label))
            .expect("every label is placed")
    };
    program
        .iter()
        .enumerate()
        .map(|(i, &(_, code, k, jt, jf))| {
            let offset = |to: To| match to {
                To::Next => 0,
                To::At(label) => {
                    let target = at(label);
                    assert!(target > i, "{label:?} comes after every jump to it");
                    u8::try_from(target - i - 1).expect("the filter is short")
                }
            };
            libc::sock_filter {
                code,
                jt: offset(jt),
                jf: offset(jf),
                k,
            }
        })
        .collect()
}

/// Installs the filter on this process (and so on everything it executes and starts). Needs
/// no_new_privs set, or CAP_SYS_ADMIN.
pub fn confine_command() -> Result<(), SysError> {
    let filter = assemble(&program());
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("the filter is short"),
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
    let done = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        )
    };
    if done < 0 {
        return Err(SysError::new(
            "install the system-call filter (seccomp)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_jump_lands_inside_the_filter() {
        let filter = super::assemble(&super::program());
        for (i, insn) in filter.iter().enumerate() {
            if insn.code == super::RET {
                continue;
            }
            assert!(i + 1 + (insn.jt as usize) < filter.len());
            assert!(i + 1 + (insn.jf as usize) < filter.len());
        }
        let last = filter.last().unwrap();
        assert_eq!(last.k, libc::SECCOMP_RET_KILL_PROCESS);
    }
}
