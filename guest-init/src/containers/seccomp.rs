//! Docker's default seccomp profile as our own table, turned into a runtime
//! spec's `linux.seccomp` for a service's effective capabilities.
//!
//! The facts follow moby's `profiles/seccomp/default.json` (moby/profiles
//! v0.3-era, read 2026-11): an allowlist whose default answer is EPERM; some
//! syscalls allowed only with a capability; `clone` without namespace flags
//! and `clone3` answered ENOSYS unless the service has CAP_SYS_ADMIN (so libc
//! falls back to `clone`, whose flags a filter can read); `socket` for every
//! family except AF_ALG and AF_VSOCK; `personality` for a few personas.
//! Differences, each on purpose:
//! - Only the architectures dstack-init is built for (x86-64 with its x86
//!   and x32 ABIs, or arm64 with arm), not docker's whole arch map.
//! - The syscalls docker gates on kernel 4.8 or later (`ptrace`,
//!   `process_vm_readv/writev`) are allowed unconditionally: the guest
//!   kernel is 6.12.
//!
//! Names libseccomp cannot resolve are skipped by libcontainer (with a
//! warning), so listing the 32-bit-only names costs nothing on x86-64, where
//! libseccomp maps them onto the x86 ABI.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// EPERM: the answer to every syscall the profile does not allow.
const EPERM: u32 = 1;
/// ENOSYS: `clone3`'s answer, so libc falls back to `clone`.
const ENOSYS: u32 = 38;

/// When a rule is part of the filter.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// Only when the service holds this capability.
    With(&'static str),
    /// Only when the service lacks this capability.
    Without(&'static str),
}

/// What the filter does for a matching call.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Allow,
    Errno(u32),
}

/// One argument test: `args[index] <op> value` (for `MaskedEq`, `args[index]
/// & value == 0`: `value` is the mask, as in docker's profile).
#[derive(Debug, Clone, Copy)]
struct ArgTest {
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
}

#[derive(Debug)]
struct Rule {
    names: &'static [&'static str],
    when: When,
    args: &'static [ArgTest],
    verdict: Verdict,
}

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        when: When::Always,
        args: &[],
        verdict: Verdict::Allow,
    }
}

const fn allow_with(cap: &'static str, names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        when: When::With(cap),
        args: &[],
        verdict: Verdict::Allow,
    }
}

const fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> ArgTest {
    ArgTest { index, op, value }
}

/// Syscalls every service may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Docker gates these on kernel 4.8 (before it, ptrace could bypass seccomp).
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// AF_ALG and AF_VSOCK, the two socket families docker's profile refuses (the
/// kernel crypto API, and the VM's channel to its host: a service has no
/// business on the CVM's vsock, which belongs to dstack-init).
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// `clone` flags that create namespaces (CLONE_NEWNS | NEWCGROUP | NEWUTS |
/// NEWIPC | NEWUSER | NEWPID | NEWNET): refused without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `personality` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (query only).
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpGt, ScmpCmpLt, ScmpCmpMaskedEq};

/// The profile's rules beyond [`ALLOWED`], in docker's order.
const RULES: &[Rule] = &[
    Rule {
        names: &["socket"],
        when: When::Always,
        args: &[arg(0, ScmpCmpLt, AF_ALG)],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["socket"],
        when: When::Always,
        args: &[arg(0, ScmpCmpEq, AF_ALG + 1)],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["socket"],
        when: When::Always,
        args: &[arg(0, ScmpCmpGt, AF_VSOCK)],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["personality"],
        when: When::Always,
        args: &[arg(0, ScmpCmpEq, PERSONAS[0])],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["personality"],
        when: When::Always,
        args: &[arg(0, ScmpCmpEq, PERSONAS[1])],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["personality"],
        when: When::Always,
        args: &[arg(0, ScmpCmpEq, PERSONAS[2])],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["personality"],
        when: When::Always,
        args: &[arg(0, ScmpCmpEq, PERSONAS[3])],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["personality"],
        when: When::Always,
        args: &[arg(0, ScmpCmpEq, PERSONAS[4])],
        verdict: Verdict::Allow,
    },
    #[cfg(target_arch = "x86_64")]
    allow(&["arch_prctl", "modify_ldt"]),
    #[cfg(target_arch = "aarch64")]
    allow(&[
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ]),
    allow_with("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    allow_with(
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    Rule {
        names: &["clone"],
        when: When::Without("CAP_SYS_ADMIN"),
        args: &[arg(0, ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS)],
        verdict: Verdict::Allow,
    },
    Rule {
        names: &["clone3"],
        when: When::Without("CAP_SYS_ADMIN"),
        args: &[],
        verdict: Verdict::Errno(ENOSYS),
    },
    allow_with("CAP_SYS_BOOT", &["reboot"]),
    allow_with("CAP_SYS_CHROOT", &["chroot"]),
    allow_with(
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    allow_with("CAP_SYS_PACCT", &["acct"]),
    allow_with(
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    allow_with("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    allow_with(
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    allow_with("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    allow_with(
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    allow_with("CAP_SYSLOG", &["syslog"]),
    allow_with("CAP_BPF", &["bpf"]),
    allow_with("CAP_PERFMON", &["perf_event_open"]),
];

/// The filter's architectures: the native ABI and the compat ABIs the same
/// kernel runs (docker's arch map, for the architecture we are built for).
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

fn syscall(rule: &Rule) -> Result<LinuxSyscall, OciSpecError> {
    let mut syscall = LinuxSyscall::default();
    syscall.set_names(rule.names.iter().map(|n| n.to_string()).collect());
    match rule.verdict {
        Verdict::Allow => {
            syscall.set_action(LinuxSeccompAction::ScmpActAllow);
        }
        Verdict::Errno(errno) => {
            syscall.set_action(LinuxSeccompAction::ScmpActErrno);
            syscall.set_errno_ret(Some(errno));
        }
    }
    if !rule.args.is_empty() {
        let args = rule
            .args
            .iter()
            .map(|a| {
                let arg = LinuxSeccompArgBuilder::default().index(a.index).op(a.op);
                match a.op {
                    // The runtime spec (and runc) read SCMP_CMP_MASKED_EQ as
                    // `args[index] & value == valueTwo`; libcontainer 0.7 passes
                    // valueTwo to libseccomp as the mask and value as the datum.
                    // Written the way libcontainer reads it, since it is the only
                    // reader; the probe in seccomp_tests.rs fails if that changes
                    // (a namespace-creating clone would then be allowed).
                    ScmpCmpMaskedEq => arg.value(0u64).value_two(a.value),
                    _ => arg.value(a.value),
                }
                .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        syscall.set_args(Some(args));
    }
    Ok(syscall)
}

/// Docker's default profile for a service holding `capabilities` (their
/// `CAP_` names): the `linux.seccomp` of its runtime spec.
pub(crate) fn default_profile<'a>(
    capabilities: impl IntoIterator<Item = &'a str>,
) -> Result<LinuxSeccomp, OciSpecError> {
    let caps: Vec<&str> = capabilities.into_iter().collect();
    let mut syscalls = vec![syscall(&allow(ALLOWED))?];
    for rule in RULES {
        let applies = match rule.when {
            When::Always => true,
            When::With(cap) => caps.contains(&cap),
            When::Without(cap) => !caps.contains(&cap),
        };
        if applies {
            syscalls.push(syscall(rule)?);
        }
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActErrno);
    seccomp.set_default_errno_ret(Some(EPERM));
    seccomp.set_architectures(Some(architectures()));
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
