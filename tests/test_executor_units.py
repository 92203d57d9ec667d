"""Pure pieces of the executor: output shaping rules, the seccomp filter's decisions,
and the worker's cleanup and disk-usage walks.

Nothing here executes model code; expectations are written out by hand from the
reference's rules (rstar_reference.md §3.4) and from the seccomp ABI.
"""

import errno
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest

from rstar_jax.verify import _disk, program_runner, sandbox


def test_sanitize_strips_fences_and_leading_python():
    assert program_runner.sanitize("```python\nprint(1)\n```") == "print(1)"
    assert program_runner.sanitize("  Python x = 1  \n") == "x = 1"
    assert program_runner.sanitize("pythonic = 3") == "ic = 3"  # the reference's regex quirk


def test_print_label_uses_first_closing_paren():
    assert program_runner.print_label("print(x)") == "x:"
    assert program_runner.print_label("print(f(x))") == "f(x:"
    assert program_runner.print_label("for i in r:\n    print(i)\n    print(i*2)") == "i i*2:"
    assert program_runner.print_label("x = 1") == ""


def test_truncate_keeps_head_and_tail():
    text = "a" * 600 + "b" * 600
    assert program_runner.truncate(text) == "a" * 512 + "..." + "b" * 512
    assert program_runner.truncate("short") == "short"
    assert program_runner.truncate("x" * 1024) == "x" * 1024


@pytest.mark.parametrize("value, expected", [
    ("0.30000000000000004\n", "0.3\n"),   # text float: rounded when shorter
    ("4\n", "4\n"),                       # "4.0\n" is longer: kept
    ("2.5\n", "2.5\n"),
    ("100000000000000000000\n", "1e+20\n"),  # reference quirk: big ints become floats
    ("[1, 2]\n", "[1, 2]\n"),
    (1 / 3, "0.3333333333333333"),        # values are never rounded
    (None, "None"),
])
def test_shape_value(value, expected):
    assert program_runner.shape_value(value) == expected


def test_print_statement_indices_follow_bodies_not_else():
    import ast
    body = ast.parse("x = 1\nprint(x)\nif x:\n    print(2)\nif x:\n    pass\nelse:\n"
                     "    print(3)\ndef f():\n    for i in x:\n        print(i)\n").body
    assert program_runner.print_statement_indices(body) == [1, 2, 4]


# --- seccomp filter, checked with a tiny classic-BPF interpreter -----------------


def _run_bpf(prog, nr, arch_tag, args=(0,) * 6):
    data = struct.pack("=iIQ6Q", nr, arch_tag, 0, *[a & (2**64 - 1) for a in args])
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):
            cond = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if cond else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


ALLOW = 0x7FFF0000
EPERM = 0x00050000 | errno.EPERM
EACCES = 0x00050000 | errno.EACCES
ESRCH = 0x00050000 | errno.ESRCH


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_seccomp_filter_decisions(arch):
    pid = 4242
    prog = sandbox.build_seccomp_filter(arch, pid)
    tag = sandbox._AUDIT_ARCH[arch]
    nr = sandbox._SYSCALLS[arch]
    run = lambda name, *args: _run_bpf(prog, nr[name], tag, args + (0,) * (6 - len(args)))
    assert run("clone", 0x00010000 | 0x100) == ALLOW           # a thread
    assert run("clone", 0x11) == EPERM                          # fork-like clone
    assert run("clone3") == 0x00050000 | errno.ENOSYS           # libc falls back to clone
    assert run("kill", pid, 9) == ALLOW
    assert run("kill", 0, 9) == ALLOW                           # own group (setsid)
    assert run("kill", -1, 9) == EPERM                          # everybody
    assert run("kill", pid + 1, 9) == EPERM
    assert run("tgkill", pid, pid, 11) == ALLOW
    assert run("tgkill", 1, 1, 9) == EPERM
    assert run("socket", 1, 1) == EACCES                        # AF_UNIX too
    assert run("socket", 2, 1) == 0x00050000 | errno.EACCES     # AF_INET
    assert run("execve") == EPERM
    assert run("ptrace") == EPERM
    assert _run_bpf(prog, 0, tag) == ALLOW  # read/io_setup: unrelated syscalls pass
    assert _run_bpf(prog, nr["kill"], 0x40000003) == 0x80000000  # foreign ABI: killed
    if arch == "x86_64":
        assert run("fork") == EPERM and run("vfork") == EPERM
        assert _run_bpf(prog, 0x40000000 | 57, tag) == EPERM    # x32 alias of fork


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_seccomp_filter_keeps_other_processes_and_outside_metadata_out_of_reach(arch):
    pid = 4242
    prog = sandbox.build_seccomp_filter(arch, pid)
    tag = sandbox._AUDIT_ARCH[arch]
    nr = sandbox._SYSCALLS[arch]
    run = lambda name, *args: _run_bpf(prog, nr[name], tag, args + (0,) * (6 - len(args)))
    rlimit_cpu, rlimit_nofile = 0, 7
    # limits, scheduling and priorities: the caller's own only
    assert run("prlimit64", 0, rlimit_cpu) == ALLOW
    assert run("prlimit64", pid, rlimit_nofile) == ALLOW
    assert run("prlimit64", 1, rlimit_cpu) == EPERM
    assert run("prlimit64", pid + 1, rlimit_nofile) == EPERM
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "setpgid"):
        assert run(name, 0) == ALLOW and run(name, pid + 1) == EPERM, name
    for name in ("sched_getaffinity", "getpgid", "getsid", "sched_getscheduler"):
        assert run(name, pid) == ALLOW and run(name, 1) == ESRCH, name
    assert run("setpriority", 0, 0, 10) == ALLOW                # PRIO_PROCESS, self
    assert run("setpriority", 0, 1, 10) == EPERM                # another process
    assert run("setpriority", 2, 0, 10) == EPERM                # PRIO_USER: every process
    assert run("getppid") == 0x00050000                         # answers 0
    # prctl: read-only options and naming allowed; the death signal and friends not
    assert run("prctl", 16) == ALLOW and run("prctl", 15) == ALLOW  # PR_GET/SET_NAME
    assert run("prctl", 0x53564D41) == ALLOW                    # PR_SET_VMA
    for option in (1, 4, 22, 35, 36, 0x59616D61):  # PDEATHSIG, DUMPABLE, SECCOMP, MM,
        assert run("prctl", option) == EPERM, option  # CHILD_SUBREAPER, PTRACER
    # metadata: the whole chmod/chown/utime/xattr family, everywhere
    for name in ("fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "utimensat",
                 "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
                 "fremovexattr", "setxattrat", "removexattrat", "file_setattr"):
        assert run(name) == EPERM, name
    if arch == "x86_64":
        for name in ("chmod", "chown", "lchown", "utime", "utimes", "futimesat"):
            assert run(name) == EPERM, name
    assert run("ioctl", 3, 0x40086602) == EPERM                 # FS_IOC_SETFLAGS
    assert run("ioctl", 3, 0x5401) == ALLOW                     # TCGETS
    assert run("fcntl", 3, 8, pid + 1) == EPERM                 # F_SETOWN elsewhere
    assert run("fcntl", 3, 8, pid) == ALLOW and run("fcntl", 3, 1) == ALLOW
    # sockets: none; only a connected AF_UNIX stream pair (sendto cannot redirect it)
    for family in (1, 2, 10, 16, 17):
        assert run("socket", family, 1) == EACCES, family
    assert run("socketpair", 1, 1 | 0x80000) == ALLOW           # SOCK_STREAM|CLOEXEC
    assert run("socketpair", 1, 2) == EACCES                    # SOCK_DGRAM
    assert run("socketpair", 1, 5) == EACCES                    # SOCK_SEQPACKET
    assert run("socketpair", 2, 1) == EACCES


def test_seccomp_filter_in_a_pid_one_process_still_refuses_kill_minus_one():
    prog = sandbox.build_seccomp_filter("x86_64", 1)
    tag, nr = sandbox._AUDIT_ARCH["x86_64"], sandbox._SYSCALLS["x86_64"]
    assert _run_bpf(prog, nr["kill"], tag, (-1, 9, 0, 0, 0, 0)) == EPERM
    assert _run_bpf(prog, nr["kill"], tag, (1, 9, 0, 0, 0, 0)) == ALLOW


def test_seccomp_filter_fits_eight_bit_jumps():
    for arch in ("x86_64", "aarch64"):
        prog = sandbox.build_seccomp_filter(arch, 1)
        assert len(prog) < 256 and all(jt < 256 and jf < 256 for _, jt, jf, _ in prog)


# --- private directory cleanup and the watched disk quota (worker side) ----------------


def _deep_tree(root, depth, file_every=0, file_bytes=0):
    """`depth` nested directories under `root`, built through directory descriptors (the
    path is far longer than PATH_MAX), with a file every `file_every` levels."""
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        if file_every and level % file_every == 0:
            f = os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
            os.write(f, b"x" * file_bytes)
            os.close(f)
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd  # the deepest directory, still open


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch directory on tmpfs when there is one: deleting a directory on a disk
    filesystem mounted with `discard` costs milliseconds, which a 3,000-deep tree
    multiplies into seconds of filesystem time, not time of the code under test."""
    if os.access("/dev/shm", os.W_OK):
        path = tempfile.mkdtemp(dir="/dev/shm")
        yield pathlib.Path(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


def test_remove_tree_handles_any_depth_and_never_follows_links(fast_tmp, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = str(fast_tmp / "tree")
    deepest = _deep_tree(root, 3000, file_every=500, file_bytes=10)
    os.symlink(str(outside), "link", dir_fd=deepest)
    os.mkdir("locked", 0, dir_fd=deepest)  # a program may create a mode-0 directory
    os.close(deepest)
    assert _disk.remove_tree(root) is True
    assert not os.path.lexists(root)
    assert (outside / "keep.txt").read_text() == "keep"  # the link went, not its target
    assert _disk.remove_tree(root) is True                # already gone: fine
    (fast_tmp / "file").write_text("x")
    assert _disk.remove_tree(str(fast_tmp / "file")) is True
    assert os.listdir(fast_tmp) == []


def test_over_budget_counts_allocated_bytes_and_inodes(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        (flat / f"f{i}").write_bytes(b"x" * (1 << 16))
    with open(flat / "sparse", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB long, nothing allocated: costs no disk
    assert not _disk.over_budget(str(flat), 1 << 20, 100)
    assert _disk.over_budget(str(flat), 1 << 17, 100)    # 4 x 64 KiB written
    assert _disk.over_budget(str(flat), 1 << 20, 5)      # 6 inodes with the directory
    deep = str(tmp_path / "deep")
    os.close(_deep_tree(deep, 200))
    assert not _disk.over_budget(deep, 1 << 30, 1000)
    assert _disk.over_budget(deep, 1 << 30, 150)         # 201 directories
    assert not _disk.over_budget(str(tmp_path / "missing"), 1, 1)


def test_cap_never_exceeds_its_bound():
    assert program_runner.cap("short", 16) == "short"
    for n in (16, 17, 4096):
        capped = program_runner.cap("a" * 5000 + "b" * 5000, n)
        assert len(capped) == n and capped.startswith("a") and capped.endswith("b")
        assert "..." in capped


IMPORT_CHECK = """
import logging, os, sys, threading
import rstar_jax.verify as verify
lazy = [m for m in ("executor", "grader") if f"rstar_jax.verify.{m}" in sys.modules]
from rstar_jax.verify import _deadline_pool, _disk, _zygote, executor, grader
from rstar_jax.verify import program_runner, sandbox
children = [c for t in os.listdir("/proc/self/task")
            for c in open(f"/proc/self/task/{t}/children").read().split()]
print(lazy, grader._POOL, _deadline_pool._POOLS, threading.active_count(), children,
      logging.getLogger("math_verify.parser").filters, sorted(verify.__all__),
      verify.PythonExecutor is executor.PythonExecutor, verify.math_equal is grader.math_equal,
      set(verify.__all__) <= set(dir(verify)))
"""


def test_importing_verify_starts_nothing_and_names_its_api():
    # A fresh interpreter: nothing else in it may have started a pool already.
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__))))
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=repo))
    assert out.stdout.split("\n")[0] == (
        "[] None [] 1 [] [] ['ExecResult', 'PythonExecutor', 'REFERENCE_TIMEOUT_S', "
        "'extract_answer', 'math_equal', 'math_equal_any'] True True True"), out.stderr
