"""Kernel-level confinement applied inside one program's process (Linux).

`confine(...)` runs in the freshly forked process that is about to execute one
model-written program (see `_zygote.py`), never in the main process. Each layer is
independent and best-effort: a layer the platform lacks is skipped and reported in
the returned `Layers`, so the executor still works (with fewer guarantees) on older
kernels or other CPU architectures. What each layer guards against:

* rlimits -- RLIMIT_AS bounds memory (a memory bomb gets MemoryError), RLIMIT_CPU
  backs up the wall-clock timeout, RLIMIT_FSIZE caps every file the program writes
  (SIGXFSZ is ignored so the write fails with EFBIG instead of killing the process),
  RLIMIT_NOFILE bounds descriptors, RLIMIT_CORE=0 stops core dumps, RLIMIT_NPROC
  stops fork bombs for non-root users only (it does not bind root).
* capabilities -- every capability is dropped from the bounding, effective, permitted
  and inheritable sets, so a program started as root cannot mount, load modules,
  reboot, change the clock or bypass file permissions of files it does not own.
* seccomp (x86_64, aarch64) -- a BPF filter refuses process creation (fork, vfork,
  clone without CLONE_THREAD; clone3 answers ENOSYS so libc falls back to clone for
  threads), exec, signals to any process but itself (`kill(-1, 9)` as root would
  otherwise kill the whole machine's processes, the main process included), ptrace
  and cross-process memory access, non-AF_UNIX sockets (no network, UDP included),
  io_uring (which could bypass the filter) and a list of administrative syscalls.
  This is what stops a fork bomb when running as root.
* Landlock (Linux >= 5.13, no privileges needed) -- writes are allowed only beneath
  the program's private directory; reads only beneath the Python installation, the
  system library directories and a few device files (so secrets in the home or work
  directory are unreadable); no execve anywhere; TCP bind/connect refused (ABI >= 4);
  signals and abstract unix sockets scoped to the sandbox (ABI >= 6). Landlock also
  stops a sandboxed process from ptrace-ing or reading /proc/<pid>/environ of any
  process outside its domain, which keeps the parent's environment private.

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
                max_open_files: int = 256) -> None:
    """Apply the per-program resource limits to the calling process."""
    limits = {
        resource.RLIMIT_AS: address_space_bytes,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_FSIZE: file_size_bytes,
        resource.RLIMIT_NOFILE: max_open_files,
        resource.RLIMIT_CORE: 0,
        # Binds only non-root users; seccomp is the fork guard for root (module doc).
        resource.RLIMIT_NPROC: 0,
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

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Per-architecture syscall numbers and audit arch tags (linux/audit.h).
_ARCH = platform.machine()
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALLS = {
    "x86_64": dict(
        fork=57, vfork=58, clone=56, clone3=435, execve=59, execveat=322, kill=62,
        tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, socket=41,
        ptrace=101, process_vm_readv=310, process_vm_writev=311, pidfd_open=434,
        pidfd_send_signal=424, pidfd_getfd=438, io_uring_setup=425, mount=165,
        umount2=166, reboot=169, unshare=272, setns=308, kexec_load=246,
        kexec_file_load=320, init_module=175, finit_module=313, delete_module=176,
        chroot=161, pivot_root=155, bpf=321, perf_event_open=298, userfaultfd=323,
        keyctl=250, add_key=248, request_key=249, swapon=167, swapoff=168,
        sethostname=170, setdomainname=171, settimeofday=164, clock_settime=227,
        quotactl=179, acct=163, open_by_handle_at=304, kcmp=312, fsopen=430,
        fsmount=432, move_mount=429, open_tree=428, fspick=433, mount_setattr=442,
        capset=126),
    "aarch64": dict(
        clone=220, clone3=435, execve=221, execveat=281, kill=129, tkill=130,
        tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, socket=198,
        ptrace=117, process_vm_readv=270, process_vm_writev=271, pidfd_open=434,
        pidfd_send_signal=424, pidfd_getfd=438, io_uring_setup=425, mount=40,
        umount2=39, reboot=142, unshare=97, setns=268, kexec_load=104,
        kexec_file_load=294, init_module=105, finit_module=273, delete_module=106,
        chroot=51, pivot_root=41, bpf=280, perf_event_open=241, userfaultfd=282,
        keyctl=219, add_key=217, request_key=218, swapon=224, swapoff=225,
        sethostname=161, setdomainname=162, settimeofday=170, clock_settime=112,
        quotactl=60, acct=89, open_by_handle_at=265, kcmp=272, fsopen=430,
        fsmount=432, move_mount=429, open_tree=428, fspick=433, mount_setattr=442,
        capset=91),
}


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (no orphans)."""
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _raise_errno("prctl(PR_SET_PDEATHSIG)")


def set_no_new_privs() -> None:
    """Required before seccomp and Landlock for unprivileged callers; harmless for root."""
    if _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")


# ---------------------------------------------------------------------------
# capabilities

_CAP_V3 = 0x20080522


def drop_capabilities() -> bool:
    """Drop every capability; returns False where the platform refused."""
    if _ARCH not in _SYSCALLS:
        return False
    last_cap = 63
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
    except OSError:
        pass
    for cap in range(last_cap + 1):
        _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: fine
    header = struct.pack("=Ii", _CAP_V3, 0)
    data = bytes(24)  # two (effective, permitted, inheritable) u32 triples, all zero
    hbuf = ctypes.create_string_buffer(header, len(header))
    dbuf = ctypes.create_string_buffer(data, len(data))
    return _LIBC.syscall(_SYSCALLS[_ARCH]["capset"], hbuf, dbuf) == 0


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
_X32_SYSCALL_BIT = 0x40000000

# seccomp_data offsets: nr at 0, arch at 4, args[i] at 16 + 8 i (low 32 bits first on
# little-endian, which both supported architectures are).
_OFF_NR, _OFF_ARCH = 0, 4


def _arg_low(i: int) -> int:
    return 16 + 8 * i


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def build_seccomp_filter(arch: str, own_pid: int) -> list[tuple[int, int, int, int]]:
    """The BPF program (list of (code, jt, jf, k)) described in the module docstring.

    `own_pid` is baked in so signal syscalls may target only the calling process.
    Raises KeyError for an architecture without a syscall table here.
    """
    nr = _SYSCALLS[arch]
    eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    prog: list[tuple[int, int, int, int]] = [
        _ins(_LD_W_ABS, _OFF_ARCH),
        _ins(_JEQ_K, _AUDIT_ARCH[arch], jt=1, jf=0),
        _ins(_RET_K, _SECCOMP_RET_KILL_PROCESS),  # foreign ABI: no way around the table
        _ins(_LD_W_ABS, _OFF_NR),
    ]
    if arch == "x86_64":  # x32 syscalls would alias the numbers below
        prog += [_ins(_JGE_K, _X32_SYSCALL_BIT, jt=0, jf=1), _ins(_RET_K, eperm)]

    def refuse(name: str, ret: int = eperm) -> None:
        if name in nr:
            prog.extend([_ins(_JEQ_K, nr[name], jt=0, jf=1), _ins(_RET_K, ret)])

    def only_self(name: str, arg: int, also: tuple[int, ...] = ()) -> None:
        # if nr matches: load arg low word, allow when it is own pid (or `also`), else EPERM.
        allowed = (own_pid,) + also
        body = [_ins(_LD_W_ABS, _arg_low(arg))]
        for value in allowed:
            body.append(_ins(_JEQ_K, value & 0xFFFFFFFF, jt=0, jf=1))
            body.append(_ins(_RET_K, _SECCOMP_RET_ALLOW))
        body.append(_ins(_RET_K, eperm))
        prog.append(_ins(_JEQ_K, nr[name], jt=0, jf=len(body)))
        prog.extend(body)

    def allow_if_flag(name: str, arg: int, flag: int) -> None:
        body = [_ins(_LD_W_ABS, _arg_low(arg)), _ins(_JSET_K, flag, jt=0, jf=1),
                _ins(_RET_K, _SECCOMP_RET_ALLOW), _ins(_RET_K, eperm)]
        prog.append(_ins(_JEQ_K, nr[name], jt=0, jf=len(body)))
        prog.extend(body)

    def allow_if_equal(name: str, arg: int, value: int, ret: int) -> None:
        body = [_ins(_LD_W_ABS, _arg_low(arg)), _ins(_JEQ_K, value, jt=0, jf=1),
                _ins(_RET_K, _SECCOMP_RET_ALLOW), _ins(_RET_K, ret)]
        prog.append(_ins(_JEQ_K, nr[name], jt=0, jf=len(body)))
        prog.extend(body)

    for name in ("fork", "vfork", "execve", "execveat", "tkill", "ptrace",
                 "process_vm_readv", "process_vm_writev", "pidfd_open",
                 "pidfd_send_signal", "pidfd_getfd", "io_uring_setup", "mount", "umount2",
                 "reboot", "unshare", "setns", "kexec_load", "kexec_file_load",
                 "init_module", "finit_module", "delete_module", "chroot", "pivot_root",
                 "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key",
                 "request_key", "swapon", "swapoff", "sethostname", "setdomainname",
                 "settimeofday", "clock_settime", "quotactl", "acct", "open_by_handle_at",
                 "kcmp", "fsopen", "fsmount", "move_mount", "open_tree", "fspick",
                 "mount_setattr"):
        refuse(name)
    # glibc falls back to clone(CLONE_THREAD) for threads when clone3 is missing.
    refuse("clone3", _SECCOMP_RET_ERRNO | errno.ENOSYS)
    allow_if_flag("clone", 0, _CLONE_THREAD)
    # kill(0, sig) targets the own process group, which after setsid is only this process.
    only_self("kill", 0, also=(0, -own_pid))
    only_self("tgkill", 0)
    only_self("rt_sigqueueinfo", 0)
    only_self("rt_tgsigqueueinfo", 0)
    allow_if_equal("socket", 0, _AF_UNIX, _SECCOMP_RET_ERRNO | errno.EACCES)
    prog.append(_ins(_RET_K, _SECCOMP_RET_ALLOW))
    return prog


def install_seccomp(own_pid: int) -> bool:
    """Install `build_seccomp_filter` for this process; False if the arch is unsupported."""
    if _ARCH not in _SYSCALLS:
        return False
    prog = build_seccomp_filter(_ARCH, own_pid)
    if len(prog) > 255:
        # Relative jumps are 8-bit; the program above is far below this bound.
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


@dataclasses.dataclass(frozen=True)
class Layers:
    """Which confinement layers `confine` managed to install (for logs and tests)."""
    capabilities_dropped: bool
    seccomp: bool
    landlock_abi: int


def confine(*, private_dir: str, read_paths: list[str], address_space_bytes: int,
            cpu_seconds: int, file_size_bytes: int) -> Layers:
    """Apply every layer to the calling (about-to-run-untrusted-code) process.

    Order matters: rlimits and capabilities first (they need privileges that the
    later layers remove), Landlock next (its rule setup opens files), seccomp last
    (it forbids nothing Landlock needs, but keeping it last keeps the setup simple).
    """
    set_rlimits(address_space_bytes=address_space_bytes, cpu_seconds=cpu_seconds,
                file_size_bytes=file_size_bytes)
    caps = drop_capabilities()
    set_no_new_privs()
    abi = install_landlock(write_dirs=[private_dir], read_paths=read_paths,
                           device_files=["/dev/null", "/dev/zero", "/dev/urandom",
                                         "/dev/random"])
    seccomp = install_seccomp(os.getpid())
    return Layers(capabilities_dropped=caps, seccomp=seccomp, landlock_abi=abi)
