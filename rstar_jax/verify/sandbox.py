"""Kernel-level confinement applied inside one program's process (Linux).

`confine(...)` runs in the freshly forked process that is about to execute one
model-written program (see `_zygote.py`), never in the main process. Each layer is
independent and best-effort: a layer the platform lacks is skipped and reported in
the returned `Layers`, so the executor still works (with fewer guarantees) on older
kernels, other CPU architectures or without root. What each layer guards against:

* rlimits -- RLIMIT_AS bounds memory (a memory bomb gets MemoryError), RLIMIT_CPU
  backs up the wall-clock timeout, RLIMIT_FSIZE caps every file the program writes
  (SIGXFSZ is ignored so the write fails with EFBIG instead of killing the process),
  RLIMIT_NOFILE bounds descriptors, RLIMIT_CORE=0 stops core dumps, RLIMIT_NPROC
  bounds threads once the process runs as the unprivileged sandbox user.
* identity -- when the main process is root, the process gives up root for an
  unprivileged uid/gid (65534, "nobody", by default) with no supplementary groups:
  it owns nothing outside its private directory, so it cannot chmod, utime, setxattr
  or chattr other files, nor change another process's limits, priority or
  affinity (the kernel checks the uid for all of these). Capabilities are gone with
  root; the bounding set is emptied too.
* seccomp (x86_64, aarch64) -- a BPF filter refuses process creation (fork, vfork,
  clone without CLONE_THREAD; clone3 answers ENOSYS so libc falls back to clone for
  threads), exec, ptrace and cross-process memory access, signals, rlimits,
  scheduling and priorities of any process but itself (`kill(-1, 9)` as root would
  otherwise kill the whole machine's processes), every `socket` (no network, no unix
  socket reached by path; only a connected AF_UNIX stream `socketpair`, which
  reaches nothing), `prctl` except a list of harmless options (so the parent death
  signal cannot be cleared), the chmod/chown/utime/xattr family and the ioctls that
  set inode flags (everywhere, the private directory included: no library a program
  needs calls them), io_uring (which could bypass the filter) and a list of
  administrative syscalls. `getppid` answers 0, as for a process whose parent is in
  another pid namespace: no other process's pid can be learnt or acted on.
* Landlock (Linux >= 5.13, no privileges needed) -- writes are allowed only beneath
  the program's private directory; reads only beneath the Python installation, the
  system library directories and a few device files (so secrets in the home or work
  directory, and /proc, are unreadable); no execve anywhere; TCP bind/connect refused
  (ABI >= 4); signals and abstract unix sockets scoped to the sandbox (ABI >= 6).
  Landlock also stops a sandboxed process from ptrace-ing or reading /proc/<pid>/environ
  of any process outside its domain, which keeps the parent's environment private.
* mounts (root only, `_zygote.py` decides) -- a private mount namespace per program
  with a size- and inode-limited tmpfs on its private directory (the disk budget;
  it disappears with the process), and, once per worker, read-only views of the
  Python installation where it lives under a directory the sandbox user may not
  enter (such as a pyenv under /root).

A pid namespace is not used: the program must see its own pid as the host does (the
executor's tests check that the pre-forked process is the one that runs the next
program), and in a pid namespace it would be 1. The seccomp rules above give the
same protection: a program cannot name, signal or limit any other process.

The environment scrub, the private working directory, the process group kill and the
wall-clock timeout live in `_zygote.py`; the executor documents the whole stack.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import platform
import resource
import signal
import struct

# ---------------------------------------------------------------------------
# rlimits


def set_rlimits(*, address_space_bytes: int, cpu_seconds: int, file_size_bytes: int,
                max_open_files: int = 256, max_tasks: int = 0) -> None:
    """Apply the per-program resource limits to the calling process.

    `max_tasks` is RLIMIT_NPROC, which counts every task (threads included) of the
    real uid and binds only non-root users: 0 for root (seccomp is the fork guard
    there) and for an unchanged non-root user (no threads), a thread budget for the
    sandbox user.
    """
    limits = {
        resource.RLIMIT_AS: address_space_bytes,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_FSIZE: file_size_bytes,
        resource.RLIMIT_NOFILE: max_open_files,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: max_tasks,
    }
    for which, value in limits.items():
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            # NPROC=0 can be refused on some kernels for a process that already
            # exists; the other layers still hold.
            pass
    # A program over RLIMIT_FSIZE should see an OSError (reported as output), not die.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# ---------------------------------------------------------------------------
# raw syscalls

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_LIBC.prctl.restype = ctypes.c_int
_LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_LIBC.mount.restype = ctypes.c_int
_LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_LIBC.unshare.restype = ctypes.c_int
_LIBC.unshare.argtypes = [ctypes.c_int]

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Per-architecture syscall numbers and audit arch tags (linux/audit.h). Numbers from
# 424 on are shared by every architecture.
_ARCH = platform.machine()
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_COMMON = dict(pidfd_send_signal=424, io_uring_setup=425, open_tree=428, move_mount=429,
               fsopen=430, fsmount=432, fspick=433, pidfd_open=434, clone3=435,
               pidfd_getfd=438, process_madvise=440, mount_setattr=442,
               process_mrelease=448, fchmodat2=452, setxattrat=463, removexattrat=466,
               file_setattr=469)
_SYSCALLS = {
    "x86_64": dict(
        _COMMON,
        fork=57, vfork=58, clone=56, execve=59, execveat=322, kill=62,
        tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, socket=41,
        socketpair=53, ptrace=101, process_vm_readv=310, process_vm_writev=311,
        mount=165, umount2=166, reboot=169, unshare=272, setns=308, kexec_load=246,
        kexec_file_load=320, init_module=175, finit_module=313, delete_module=176,
        chroot=161, pivot_root=155, bpf=321, perf_event_open=298, userfaultfd=323,
        keyctl=250, add_key=248, request_key=249, swapon=167, swapoff=168,
        sethostname=170, setdomainname=171, settimeofday=164, clock_settime=227,
        quotactl=179, acct=163, open_by_handle_at=304, kcmp=312, capset=126, capget=125,
        chmod=90, fchmod=91, fchmodat=268, chown=92, fchown=93, lchown=94, fchownat=260,
        utime=132, utimes=235, futimesat=261, utimensat=280, setxattr=188,
        lsetxattr=189, fsetxattr=190, removexattr=197, lremovexattr=198,
        fremovexattr=199, prlimit64=302, prctl=157, ioctl=16, fcntl=72,
        sched_setaffinity=203, sched_getaffinity=204, sched_setscheduler=144,
        sched_getscheduler=145, sched_setparam=142, sched_getparam=143,
        sched_setattr=314, sched_getattr=315, sched_rr_get_interval=148,
        setpriority=141, getpriority=140, ioprio_set=251, ioprio_get=252,
        migrate_pages=256, move_pages=279, getpgid=121, getsid=124, setpgid=109,
        getppid=110, get_robust_list=274),
    "aarch64": dict(
        _COMMON,
        clone=220, execve=221, execveat=281, kill=129, tkill=130,
        tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, socket=198,
        socketpair=199, ptrace=117, process_vm_readv=270, process_vm_writev=271,
        mount=40, umount2=39, reboot=142, unshare=97, setns=268, kexec_load=104,
        kexec_file_load=294, init_module=105, finit_module=273, delete_module=106,
        chroot=51, pivot_root=41, bpf=280, perf_event_open=241, userfaultfd=282,
        keyctl=219, add_key=217, request_key=218, swapon=224, swapoff=225,
        sethostname=161, setdomainname=162, settimeofday=170, clock_settime=112,
        quotactl=60, acct=89, open_by_handle_at=265, kcmp=272, capset=91, capget=90,
        fchmod=52, fchmodat=53, fchown=55, fchownat=54, utimensat=88, setxattr=5,
        lsetxattr=6, fsetxattr=7, removexattr=14, lremovexattr=15, fremovexattr=16,
        prlimit64=261, prctl=167, ioctl=29, fcntl=25,
        sched_setaffinity=122, sched_getaffinity=123, sched_setscheduler=119,
        sched_getscheduler=120, sched_setparam=118, sched_getparam=121,
        sched_setattr=274, sched_getattr=275, sched_rr_get_interval=127,
        setpriority=140, getpriority=141, ioprio_set=30, ioprio_get=31,
        migrate_pages=238, move_pages=239, getpgid=155, getsid=156, setpgid=154,
        getppid=173, get_robust_list=100),
}


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (no orphans).

    The kernel clears this setting whenever the process's credentials change, so it
    is set again after giving up root.
    """
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _raise_errno("prctl(PR_SET_PDEATHSIG)")


def set_no_new_privs() -> None:
    """Required before seccomp and Landlock for unprivileged callers; harmless for root."""
    if _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")


# ---------------------------------------------------------------------------
# capabilities and identity

_CAP_V3 = 0x20080522


def _drop_bounding_set() -> None:
    last_cap = 63
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
    except OSError:
        pass
    for cap in range(last_cap + 1):
        _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: fine


def drop_capabilities() -> bool:
    """Drop every capability; returns False where the platform refused."""
    if _ARCH not in _SYSCALLS:
        return False
    _drop_bounding_set()
    header = struct.pack("=Ii", _CAP_V3, 0)
    data = bytes(24)  # two (effective, permitted, inheritable) u32 triples, all zero
    hbuf = ctypes.create_string_buffer(header, len(header))
    dbuf = ctypes.create_string_buffer(data, len(data))
    return _LIBC.syscall(_SYSCALLS[_ARCH]["capset"], hbuf, dbuf) == 0


def drop_identity(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good (real, effective and saved ids), with no groups.

    Needs root; from root to a non-zero uid the kernel clears every capability.
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError(errno.EPERM, f"could not become uid {uid} gid {gid}")


def may_search(path: str, uid: int, gid: int) -> bool:
    """Whether uid/gid (no groups, no capabilities) may traverse directory `path`."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The highest directory above absolute `path` that uid/gid may not traverse."""
    current = ""
    for part in path.strip("/").split("/")[:-1]:
        current += "/" + part
        if not may_search(current, uid, gid):
            return current
    return None


# ---------------------------------------------------------------------------
# seccomp BPF

# classic BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
_SOCK_STREAM = 1
_PRIO_PROCESS = 0
_F_SETOWN, _F_SETOWN_EX = 8, 15
_X32_SYSCALL_BIT = 0x40000000

# seccomp_data offsets: nr at 0, arch at 4, args[i] at 16 + 8 i (low 32 bits first on
# little-endian, which both supported architectures are). Every argument checked below
# is a C int or unsigned int, so its low 32 bits are all the kernel reads.
_OFF_NR, _OFF_ARCH = 0, 4

# Refused outright (EPERM). Process creation, exec, tracing, namespaces, mounts, module
# loading, clocks, keys, io_uring; then metadata changes (no library a math program
# uses calls them at run time, and as root they would reach files outside the private
# directory that Landlock does not cover: Landlock guards contents, not modes, times
# or xattrs); then syscalls that act on another process by pid or pidfd.
_REFUSED = (
    "fork", "vfork", "execve", "execveat", "tkill", "ptrace", "process_vm_readv",
    "process_vm_writev", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "io_uring_setup", "mount", "umount2", "reboot", "unshare", "setns", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "chroot",
    "pivot_root", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key",
    "request_key", "swapon", "swapoff", "sethostname", "setdomainname", "settimeofday",
    "clock_settime", "quotactl", "acct", "open_by_handle_at", "kcmp", "fsopen",
    "fsmount", "move_mount", "open_tree", "fspick", "mount_setattr", "capset", "capget",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    "file_setattr", "ioprio_set", "ioprio_get", "migrate_pages", "move_pages",
    "get_robust_list", "process_madvise", "process_mrelease")
# Syscalls whose first argument is a pid: allowed for 0 (the caller) and its own pid.
_OWN_PID_CHANGES = ("prlimit64", "sched_setaffinity", "sched_setscheduler",
                    "sched_setparam", "sched_setattr", "setpgid")       # else EPERM
_OWN_PID_LOOKUPS = ("getpgid", "getsid", "sched_getaffinity", "sched_getscheduler",
                    "sched_getparam", "sched_getattr", "sched_rr_get_interval")  # ESRCH
# prctl options that only read state or name the caller's own threads and mappings
# (CPython, numpy and OpenBLAS call none at run time; these are what libraries may).
# Everything else is refused: PR_SET_PDEATHSIG (the program must die with its worker),
# PR_SET_DUMPABLE, PR_SET_PTRACER, PR_SET_CHILD_SUBREAPER, PR_SET_MM, PR_SET_SECUREBITS,
# PR_SET_SPECULATION_CTRL, PR_SCHED_CORE, PR_SET_MEMORY_MERGE and the rest.
_PRCTL_ALLOWED = (
    2,   # PR_GET_PDEATHSIG
    3,   # PR_GET_DUMPABLE
    7,   # PR_GET_KEEPCAPS
    13,  # PR_GET_TIMING
    15,  # PR_SET_NAME (own thread's name)
    16,  # PR_GET_NAME
    21,  # PR_GET_SECCOMP
    23,  # PR_CAPBSET_READ
    25,  # PR_GET_TSC
    27,  # PR_GET_SECUREBITS
    30,  # PR_GET_TIMERSLACK
    37,  # PR_GET_CHILD_SUBREAPER
    39,  # PR_GET_NO_NEW_PRIVS
    40,  # PR_GET_TID_ADDRESS
    41,  # PR_SET_THP_DISABLE (own memory)
    42,  # PR_GET_THP_DISABLE
    46,  # PR_GET_FP_MODE
    52,  # PR_GET_SPECULATION_CTRL
    0x53564D41,  # PR_SET_VMA (names own anonymous mappings; glibc may)
)
# ioctl requests that change inode flags, versions or owners of signal delivery.
_IOCTL_REFUSED = (
    0x40086602,  # FS_IOC_SETFLAGS (chattr)
    0x40046602,  # FS_IOC32_SETFLAGS
    0x401C5820,  # FS_IOC_FSSETXATTR
    0x40087602,  # FS_IOC_SETVERSION
    0x40047602,  # FS_IOC32_SETVERSION
    0x8901,      # FIOSETOWN (SIGIO to another process)
    0x8902,      # SIOCSPGRP
    0x5412,      # TIOCSTI (type into a terminal)
)

_Ins = tuple[int, int, int, int]


class _Assembler:
    """Classic BPF with forward jumps to named labels, resolved to 8-bit offsets."""

    def __init__(self) -> None:
        self._code: list[tuple[int, int | str, int | str, int]] = []
        self._labels: dict[str, int] = {}

    def emit(self, code: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self._code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def assemble(self) -> list[_Ins]:
        out = []
        for i, (code, jt, jf, k) in enumerate(self._code):
            offsets = []
            for target in (jt, jf):
                offset = target if isinstance(target, int) else self._labels[target] - i - 1
                if not 0 <= offset <= 255:
                    raise ValueError(f"seccomp filter jump from {i} to {target!r} does "
                                     f"not fit 8 bits ({offset})")
                offsets.append(offset)
            out.append((code, offsets[0], offsets[1], k))
        return out


def build_seccomp_filter(arch: str, own_pid: int) -> list[_Ins]:
    """The BPF program (list of (code, jt, jf, k)) described in the module docstring.

    `own_pid` is baked in so pid-taking syscalls may target only the calling process.
    Raises KeyError for an architecture without a syscall table here.
    """
    nr = _SYSCALLS[arch]
    a = _Assembler()
    blocks = iter(range(1 << 16))

    def on(names: tuple[str, ...], body) -> None:
        """Run `body` (which ends in jumps to return labels) for any of `names`."""
        numbers = [nr[name] for name in names if name in nr]
        if not numbers:
            return
        start, skip = f"body{next(blocks)}", f"skip{next(blocks)}"
        for number in numbers[:-1]:
            a.emit(_JEQ_K, number, jt=start)
        a.emit(_JEQ_K, numbers[-1], jt=0, jf=skip)
        a.label(start)
        body()
        a.label(skip)

    def arg_in(arg: int, values, otherwise: str, then: str = "allow") -> None:
        """Jump to `then` when the argument's low word is one of `values`, else `otherwise`."""
        values = sorted({v & 0xFFFFFFFF for v in values})
        a.emit(_LD_W_ABS, 16 + 8 * arg)
        for value in values[:-1]:
            a.emit(_JEQ_K, value, jt=then)
        a.emit(_JEQ_K, values[-1], jt=then, jf=otherwise)

    def socketpair() -> None:  # only a connected AF_UNIX stream pair
        a.emit(_LD_W_ABS, 16)
        a.emit(_JEQ_K, _AF_UNIX, jt=0, jf="eacces")
        a.emit(_LD_W_ABS, 24)
        a.emit(_JSET_K, 0xE, jt="eacces")     # type & 0xf is not SOCK_STREAM
        a.emit(_JSET_K, _SOCK_STREAM, jt="allow", jf="eacces")

    def clone() -> None:  # threads only
        a.emit(_LD_W_ABS, 16)
        a.emit(_JSET_K, _CLONE_THREAD, jt="allow", jf="eperm")

    def priority(otherwise: str) -> None:  # (PRIO_PROCESS, self) only
        a.emit(_LD_W_ABS, 16)
        a.emit(_JEQ_K, _PRIO_PROCESS, jt=0, jf=otherwise)
        arg_in(1, (0, own_pid), otherwise)

    def fcntl() -> None:  # F_SETOWN only to itself; F_SETOWN_EX refused
        a.emit(_LD_W_ABS, 24)
        a.emit(_JEQ_K, _F_SETOWN_EX, jt="eperm")
        a.emit(_JEQ_K, _F_SETOWN, jt=0, jf="allow")
        arg_in(2, (0, own_pid), "eperm")

    a.emit(_LD_W_ABS, _OFF_ARCH)
    a.emit(_JEQ_K, _AUDIT_ARCH[arch], jt=0, jf="kill")  # foreign ABI: no way around
    a.emit(_LD_W_ABS, _OFF_NR)
    if arch == "x86_64":  # x32 syscalls would alias the numbers below
        a.emit(_JGE_K, _X32_SYSCALL_BIT, jt="eperm")
    for name in _REFUSED:
        if name in nr:
            a.emit(_JEQ_K, nr[name], jt="eperm")
    # glibc falls back to clone(CLONE_THREAD) for threads when clone3 is missing.
    a.emit(_JEQ_K, nr["clone3"], jt="enosys")
    a.emit(_JEQ_K, nr["socket"], jt="eacces")
    a.emit(_JEQ_K, nr["getppid"], jt="zero")
    on(("clone",), clone)
    # kill(0, sig) targets the own process group, which after setsid is only this
    # process; kill(-pid) the group it leads. kill(-1) (everybody) never.
    own_group = {own_pid, 0, -own_pid} - {-1}
    on(("kill",), lambda: arg_in(0, own_group, "eperm"))
    on(("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"),
       lambda: arg_in(0, (own_pid,), "eperm"))
    on(_OWN_PID_CHANGES, lambda: arg_in(0, (0, own_pid), "eperm"))
    on(_OWN_PID_LOOKUPS, lambda: arg_in(0, (0, own_pid), "esrch"))
    on(("setpriority",), lambda: priority("eperm"))
    on(("getpriority",), lambda: priority("esrch"))
    on(("prctl",), lambda: arg_in(0, _PRCTL_ALLOWED, "eperm"))
    on(("socketpair",), socketpair)
    on(("ioctl",), lambda: arg_in(1, _IOCTL_REFUSED, "allow", then="eperm"))
    on(("fcntl",), fcntl)
    for name, ret in (("allow", _SECCOMP_RET_ALLOW),
                      ("eperm", _SECCOMP_RET_ERRNO | errno.EPERM),
                      ("eacces", _SECCOMP_RET_ERRNO | errno.EACCES),
                      ("esrch", _SECCOMP_RET_ERRNO | errno.ESRCH),
                      ("enosys", _SECCOMP_RET_ERRNO | errno.ENOSYS),
                      ("zero", _SECCOMP_RET_ERRNO),  # the syscall returns 0
                      ("kill", _SECCOMP_RET_KILL_PROCESS)):
        a.label(name)
        a.emit(_RET_K, ret)
    return a.assemble()


def install_seccomp(own_pid: int) -> bool:
    """Install `build_seccomp_filter` for this process; False if the arch is unsupported."""
    if _ARCH not in _SYSCALLS:
        return False
    prog = build_seccomp_filter(_ARCH, own_pid)
    if len(prog) > 255:
        # Every jump must reach the shared return instructions at the end.
        raise ValueError(f"seccomp filter too long for 8-bit jumps: {len(prog)}")
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    if _LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        _raise_errno("prctl(PR_SET_SECCOMP)")
    return True


# ---------------------------------------------------------------------------
# Landlock

_SYS_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel, 0 when unavailable."""
    ret = _LIBC.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(ret), 0)


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def install_landlock(*, write_dirs: list[str], read_paths: list[str],
                     device_files: list[str]) -> int:
    """Confine the filesystem (and TCP, signals where the ABI allows); returns the ABI used.

    `write_dirs` get read and write rights (no execute); `read_paths` get read rights
    only; `device_files` (such as /dev/null) get read and write. Paths that do not exist
    are skipped. Returns 0 without doing anything where Landlock is unavailable.
    """
    abi = landlock_abi()
    if abi <= 0:
        return 0
    handled = _handled_fs(abi)
    if abi >= 6:
        attr = struct.pack("=QQQ", handled, NET_BIND_TCP | NET_CONNECT_TCP,
                           SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled, NET_BIND_TCP | NET_CONNECT_TCP)
    else:
        attr = struct.pack("=Q", handled)
    abuf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _LIBC.syscall(_SYS_LANDLOCK_CREATE_RULESET, abuf, ctypes.c_size_t(len(attr)),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        _raise_errno("landlock_create_ruleset")
    read = FS_READ_FILE | FS_READ_DIR
    write = handled & ~FS_EXECUTE
    try:
        for rights, paths in ((write, write_dirs), (read, read_paths),
                              (FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV, device_files)):
            for path in paths:
                _add_path_rule(ruleset, path, rights & handled)
        if _LIBC.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset),
                         ctypes.c_uint32(0)) != 0:
            _raise_errno("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_path_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS  # directory-only rights on a file are EINVAL
        attr = struct.pack("=Qi", rights, fd)
        buf = ctypes.create_string_buffer(attr, len(attr))
        if _LIBC.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                         ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), buf,
                         ctypes.c_uint32(0)) != 0:
            _raise_errno(f"landlock_add_rule({path!r})")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# mount namespaces (root only)

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()
    if _LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        _raise_errno(f"mount({source!r}, {target!r}, {fstype!r})")


def unshare_mount_namespace(private: bool = True) -> None:
    """Give the caller its own mount namespace (a copy of its current one).

    `private` stops propagation to and from the parent namespace for every mount;
    a copy of a namespace that is private already (the worker's) is private too.
    """
    if _LIBC.unshare(CLONE_NEWNS) != 0:
        _raise_errno("unshare(CLONE_NEWNS)")
    if private:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_tmpfs(path: str, *, size_bytes: int, inodes: int, uid: int, gid: int,
                mode: int = 0o700) -> None:
    """A tmpfs on `path` holding at most `size_bytes` bytes and `inodes` files and dirs."""
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={size_bytes},nr_inodes={inodes},mode={mode:o},uid={uid},gid={gid}")


def expose_read_paths(paths: list[str], uid: int, gid: int) -> list[str]:
    """Make each of `paths` reachable by uid/gid, in the caller's mount namespace.

    A path below a directory that uid/gid may not traverse (a Python built by pyenv
    under /root, mode 0700) would be unreadable once the process gives up root. The
    highest such directory is covered by a small read-only tmpfs holding only mount
    points, on which each path is bind-mounted read-only: the sandbox user reaches the
    Python installation and nothing else that directory holds. Must run after
    `unshare_mount_namespace`. Returns the directories covered.
    """
    groups: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(p) for p in paths}):
        top = blocked_ancestor(path, uid, gid)
        if top is not None and os.path.exists(path):
            groups.setdefault(top, []).append(path)
    for top, members in groups.items():
        outermost = [p for p in members
                     if not any(p.startswith(q + "/") for q in members if q != p)]
        handles = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in outermost]
        try:
            _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV,
                   "size=1m,nr_inodes=4096,mode=755")
            for path, fd in handles:
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.makedirs(path, 0o755, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                    open(path, "w").close()
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
                _mount(None, path, None,
                       MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            _mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            for _, fd in handles:
                os.close(fd)
    return sorted(groups)


# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layers:
    """Which confinement layers `confine` managed to install (for logs and tests)."""
    capabilities_dropped: bool
    seccomp: bool
    landlock_abi: int
    uid: int


def confine(*, private_dir: str, read_paths: list[str], address_space_bytes: int,
            cpu_seconds: int, file_size_bytes: int, uid: int | None = None,
            gid: int | None = None, max_tasks: int = 256) -> Layers:
    """Apply every layer to the calling (about-to-run-untrusted-code) process.

    `uid`/`gid`: the unprivileged identity to take (needs root; None keeps the
    caller's). `max_tasks`: RLIMIT_NPROC for that identity (threads of every process of
    the uid). Order matters: rlimits and the capability bounding set first, then the
    identity (they need privileges it removes), the parent death signal again (the
    kernel clears it when credentials change), Landlock (its rule setup opens files)
    and seccomp last.
    """
    set_rlimits(address_space_bytes=address_space_bytes, cpu_seconds=cpu_seconds,
                file_size_bytes=file_size_bytes,
                max_tasks=max_tasks if uid is not None else 0)
    if uid is not None:
        _drop_bounding_set()
        drop_identity(uid, gid if gid is not None else uid)
        set_parent_death_signal()
    caps = drop_capabilities()
    set_no_new_privs()
    abi = install_landlock(write_dirs=[private_dir], read_paths=read_paths,
                           device_files=["/dev/null", "/dev/zero", "/dev/urandom",
                                         "/dev/random"])
    seccomp = install_seccomp(os.getpid())
    return Layers(capabilities_dropped=caps, seccomp=seccomp, landlock_abi=abi,
                  uid=os.getuid())
