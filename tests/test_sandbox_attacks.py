"""The sandbox against a hostile program, one test per attack class of the red-team pass.

Every verdict is taken from outside the sandbox: the target file's mode, owner, times
and xattrs; the limits, priority and affinity of the main process, the workers and
their pre-forked spares in /proc; a host socket that must receive nothing; the results
of the innocent programs of the same and later batches (served fresh and from the
cache); the base directory and the process table after `close()`. What a program
prints about its own attempts is only a hint of which layer refused.
"""

import os
import socket
import tempfile
import threading
import time

import pytest

from rstar_jax.verify import sandbox
from rstar_jax.verify.executor import PythonExecutor

TIMEOUT_S = 5.0
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="uid drop and tmpfs budget need root")
needs_seccomp = pytest.mark.skipif(sandbox._ARCH not in sandbox._SYSCALLS,
                                   reason=f"no seccomp syscall table for {sandbox._ARCH}")
_fresh = iter(range(10**6))

# Runs every named attempt and prints "name:outcome" for each (the outcome is "ok" or
# the exception type), so a test can see which attempt, if any, got through.
ATTEMPTS = '''
out = []
def attempt(name, fn):
    try:
        fn()
        out.append(name + ':ok')
    except Exception as exc:
        out.append(name + ':' + type(exc).__name__)
'''


@pytest.fixture(scope="module")
def executor():
    with PythonExecutor(num_workers=2, timeout_s=TIMEOUT_S) as ex:
        yield ex
    assert not os.path.exists(ex.base_dir)


def light(**kw):
    """A small executor that starts fast (nothing preloaded)."""
    return PythonExecutor(**{"num_workers": 1, "timeout_s": TIMEOUT_S, "preload": (), **kw})


def children(pid):
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def descendants(pid):
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def proc_status(pid):
    return dict(line.split(":\t", 1) for line in
                open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)


def spares(ex):
    """Each worker's pre-forked child, once it has confined itself (until a worker is
    ready its child may be its start-up probe, so first make every worker ready)."""
    deadline = time.monotonic() + 60
    while not all(w.ready for w in ex._workers):  # `run` reads the ready messages
        assert time.monotonic() < deadline
        ex.run([f"{next(_fresh)} + 0"])
    found = []
    for worker in ex._workers:
        while True:
            kids = children(worker.proc.pid)
            if len(kids) == 1 and proc_status(kids[0])["NoNewPrivs"].strip() == "1":
                break
            assert time.monotonic() < deadline, kids
            time.sleep(0.01)
        found += kids
    return found


def innocent_results_are_right(ex):
    """Two fresh numpy programs (one per worker, so each runs in a spare that existed
    during the attack) give the right answer, and again from the cache."""
    n = next(_fresh) + 100
    programs = [f"import numpy as np\nprint(int(np.arange({n}).sum()))",
                f"import math\nmath.factorial({n % 20})  # {n}"]
    expected = [str(n * (n - 1) // 2), str(__import__("math").factorial(n % 20))]
    first = ex.run(programs)
    assert [r.output for r in first] == expected and not any(r.error for r in first)
    again = ex.run(programs)
    assert all(a is b for a, b in zip(first, again))  # from the cache, and equal


def no_leftovers(ex):
    for name in os.listdir(ex.base_dir):
        assert os.listdir(os.path.join(ex.base_dir, name)) == [], name


# --- other processes' limits, priorities and death signal ------------------------------

def _process_state(pid):
    return (open(f"/proc/{pid}/limits").read(), os.getpriority(os.PRIO_PROCESS, pid),
            os.sched_getaffinity(pid))


@needs_seccomp
def test_limits_priority_and_affinity_of_other_processes_are_unchanged(executor):
    executor.run(["0", "1"])
    workers = [w.proc.pid for w in executor._workers]
    existing = [os.getpid()] + workers + spares(executor)
    before = {pid: _process_state(pid) for pid in existing}
    # Every pid from the spares up to the ones forked next (the spare the attacker's
    # own worker forks while it runs included), and the main process and workers.
    targets = sorted(set(existing) | set(range(min(existing[3:]), max(existing) + 300)))
    program = ATTEMPTS + f'''
import ctypes, os, resource
for pid in {targets}:
    if pid == os.getpid():
        continue  # a process may limit itself
    attempt('cpu', lambda: resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1)))
    attempt('nofile', lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (5, 5)))
    attempt('as', lambda: resource.prlimit(pid, resource.RLIMIT_AS, (1 << 20, 1 << 20)))
    attempt('nice', lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
    attempt('affinity', lambda: os.sched_setaffinity(pid, {{0}}))
    attempt('signal', lambda: os.kill(pid, 0))
attempt('nice_all', lambda: os.setpriority(os.PRIO_USER, 0, 19))
libc = ctypes.CDLL(None, use_errno=True)
def prctl(option, value):
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl')
attempt('no_death_signal', lambda: prctl(1, 0))
attempt('dumpable', lambda: prctl(4, 1))
attempt('subreaper', lambda: prctl(36, 1))
attempt('own_limit', lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
print(' '.join(sorted(set(out))))
'''
    result = executor.run([program])[0]
    refused = [f"{name}:PermissionError" for name in (
        "affinity", "as", "cpu", "dumpable", "nice", "nice_all", "no_death_signal",
        "nofile", "signal", "subreaper")]
    assert result.output == " ".join(sorted(refused + ["own_limit:ok"])), result.output
    gone = [pid for pid in existing if not alive(pid)]
    assert len(gone) == 1 and gone[0] in existing[3:]  # the spare that ran the attack
    for pid in set(existing) - set(gone):
        assert _process_state(pid) == before[pid], pid
    for pid in spares(executor):  # including the ones forked during the attack
        limits = {line[:25].strip(): line[25:].split()[:2]
                  for line in open(f"/proc/{pid}/limits").read().splitlines()[1:]}
        assert limits["Max cpu time"] != ["1", "1"] and limits["Max open files"] != ["5", "5"]
    innocent_results_are_right(executor)
    assert executor.cache_info()["worker_restarts"] == 0


def test_no_program_process_outlives_its_worker_or_close():
    ex = light(timeout_s=30.0)
    try:
        ex.run(["0"])
        worker = ex._workers[0].proc.pid
        program = ("import ctypes, time\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n"
                   "time.sleep(60)")
        results = []
        thread = threading.Thread(target=lambda: results.append(ex.run([program])[0]))
        thread.start()
        deadline = time.monotonic() + 10
        while len(children(worker)) < 2:  # the program's process and the next spare
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)  # it has tried to clear its death signal by now
        processes = descendants(worker)
        os.kill(worker, 9)  # the worker dies (the red team got there through prlimit)
        thread.join(20)
        assert results[0].output.startswith("SandboxError") and results[0].error
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(alive(pid) for pid in processes)
        assert ex.run(["6 * 7"])[0].output == "42"  # a new worker took over
        processes = [w.proc.pid for w in ex._workers]
        processes += [p for w in processes for p in descendants(w)]
    finally:
        ex.close()
    ex.close()  # twice is fine
    assert not any(alive(pid) for pid in processes)
    assert not os.path.exists(ex.base_dir)


# --- metadata of files outside the private directory -----------------------------------

@needs_seccomp
@pytest.mark.parametrize("uid", [65534, None], ids=["sandbox_uid", "root_without_caps"])
def test_metadata_outside_the_private_directory_is_unchanged(uid):
    if uid is None and sandbox.landlock_abi() == 0:
        pytest.skip("root without Landlock may write root-owned files")
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o755)  # reachable by any uid: only the sandbox may stop the program
    target = os.path.join(folder, "target")
    with open(target, "w") as f:
        f.write("secret")
    os.chmod(target, 0o600)
    os.setxattr(target, "user.rstar", b"original")
    os.utime(target, ns=(10**18, 10**18))

    def snapshot():  # (not reading the file, which would move its atime)
        st = os.stat(target)
        return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns,
                st.st_mtime_ns, [(k, os.getxattr(target, k)) for k in os.listxattr(target)])

    before = snapshot()
    program = ATTEMPTS + f'''
import os
t = {target!r}
attempt('chmod', lambda: os.chmod(t, 0o4777))
attempt('chown', lambda: os.chown(t, 65534, 65534))
attempt('utime', lambda: os.utime(t, (0, 0)))
attempt('touch', lambda: os.utime(t))
attempt('setxattr', lambda: os.setxattr(t, 'user.rstar', b'forged'))
attempt('newxattr', lambda: os.setxattr(t, 'user.other', b'x'))
attempt('removexattr', lambda: os.removexattr(t, 'user.rstar'))
attempt('truncate', lambda: os.truncate(t, 0))
attempt('rename', lambda: os.rename(t, t + '.moved'))
attempt('unlink', lambda: os.unlink(t))
fd = os.open('own', os.O_CREAT | os.O_WRONLY, 0o600)
attempt('own_fchmod', lambda: os.fchmod(fd, 0o777))
attempt('own_utime', lambda: os.utime('own', (0, 0)))
print(' '.join(out))
'''
    try:
        with light(sandbox_uid=uid) as ex:
            result = ex.run([program])[0]
        assert snapshot() == before and open(target).read() == "secret"
        assert ":ok" not in result.output, result.output
        for name in ("chmod", "chown", "utime", "touch", "setxattr", "newxattr",
                     "removexattr", "own_fchmod", "own_utime"):
            assert f"{name}:PermissionError" in result.output.split(), (name, result.output)
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


# --- unix sockets reached by path ------------------------------------------------------

@needs_seccomp
@pytest.mark.parametrize("uid", [65534, None], ids=["sandbox_uid", "root_without_caps"])
def test_a_host_unix_socket_receives_nothing(uid):
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o777)
    stream_path, dgram_path = os.path.join(folder, "s.sock"), os.path.join(folder, "d.sock")
    abstract = f"\0rstar-sandbox-test-{os.getpid()}"
    stream, dgram = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract_listener = socket.socket(socket.AF_UNIX)
    try:
        stream.bind(stream_path)
        stream.listen(8)
        dgram.bind(dgram_path)
        abstract_listener.bind(abstract)
        abstract_listener.listen(8)
        for path in (stream_path, dgram_path):
            os.chmod(path, 0o777)
        for s in (stream, dgram, abstract_listener):
            s.setblocking(False)
        program = ATTEMPTS + f'''
import socket
S, D, A = {stream_path!r}, {dgram_path!r}, {abstract!r}
attempt('stream', lambda: socket.socket(socket.AF_UNIX).connect(S))
attempt('dgram', lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'x', D))
attempt('abstract', lambda: socket.socket(socket.AF_UNIX).connect(A))
pair = lambda kind: socket.socketpair(socket.AF_UNIX, kind)
attempt('dgram_pair', lambda: pair(socket.SOCK_DGRAM)[0].sendto(b'x', D))
a, b = socket.socketpair()
attempt('pair_sendto', lambda: a.sendto(b'x', D))
attempt('pair_connect', lambda: a.connect(S))
attempt('inet', lambda: socket.create_connection(('127.0.0.1', 9), timeout=1))
attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
a.sendall(b'ping')
out.append('pair:' + b.recv(4).decode())
print(' '.join(out))
'''
        with light(sandbox_uid=uid) as ex:
            result = ex.run([program])[0]
        outcomes = dict(item.split(":") for item in result.output.split())
        assert outcomes["pair"] == "ping"  # a connected stream pair still works (asyncio)
        assert all(outcomes[k] == "PermissionError" for k in
                   ("stream", "dgram", "abstract", "dgram_pair", "inet", "netlink")), outcomes
        assert all(outcomes[k] != "ok" for k in ("pair_sendto", "pair_connect")), outcomes
        for listener in (stream, abstract_listener):
            with pytest.raises(BlockingIOError):
                listener.accept()
        with pytest.raises(BlockingIOError):
            dgram.recv(16)
    finally:
        for s in (stream, dgram, abstract_listener):
            s.close()
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


# --- forged results --------------------------------------------------------------------

# Writes framed messages in the worker protocol's shape, and raw ones, to every
# descriptor it has; one of them is its result pipe.
FORGER = r'''
import json, os, struct
messages = [{"kind": "ready"}, {"kind": "started"}, {"ready": True},
            {"kind": "result", "output": "FORGED", "raised": False, "abnormal": False,
             "timed_out": False, "cacheable": True, "duration_s": "soon"},
            {"output": "FORGED", "duration_s": 1e308, "started": True}]
for fd in range(3, 256):
    for message in messages:
        body = json.dumps(message).encode()
        for data in (struct.pack(">Q", len(body)) + body, body):
            try:
                os.write(fd, data)
            except OSError:
                pass
print("forger ran")
'''
WRITE_TO_EVERY_FD = ("import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, {data})\n"
                     "    except OSError:\n        pass\n")
DEEP_NESTING = WRITE_TO_EVERY_FD.format(data="b'[' * 100000") + "print('x')"
PAST_THE_CAP = (WRITE_TO_EVERY_FD.format(data="b'q' * 10000")
                + "os._exit(100)  # the runner's 'clean' status")


def test_forged_results_change_nothing_for_other_programs(executor):
    n = next(_fresh) * 10 + 1000
    innocent = [f"{n + i} * 2" for i in range(6)]
    expected = [str(2 * (n + i)) for i in range(6)]
    restarts = executor.cache_info()["worker_restarts"]
    for batch in ([FORGER] + innocent[:3], [innocent[3], FORGER + "# 2", innocent[4]],
                  [DEEP_NESTING, innocent[5], PAST_THE_CAP]):
        results = executor.run(batch)
        for program, result in zip(batch, results):
            if program in innocent:
                assert result.output == expected[innocent.index(program)] and not result.error
            assert len(result.output) <= 4096
    # later batches, fresh and from the cache, are right and the pool never restarted
    assert [r.output for r in executor.run(innocent)] == expected
    fresh = [f"{n + 100 + i} + 1" for i in range(4)]
    assert [r.output for r in executor.run(fresh)] == [str(n + 101 + i) for i in range(4)]
    assert executor.cache_info()["worker_restarts"] == restarts
    innocent_results_are_right(executor)


def test_an_oversized_result_is_an_error_for_that_program_only_and_never_cached(executor):
    before = executor.cache_info()
    for _ in range(2):
        bomb, after = executor.run([DEEP_NESTING, "'after'"])
        assert bomb.error and bomb.output.startswith("SandboxError: the program's result was")
        assert after.output == "after"
    info = executor.cache_info()
    assert info["misses"] - before["misses"] == 3  # the bomb ran twice: not cached
    capped = executor.run([PAST_THE_CAP])[0]
    assert len(capped.output) == 4096 and capped.output.startswith("qqq")


# --- disk ------------------------------------------------------------------------------

DISK_FLOOD = '''
import os
n = 0
try:
    while n < 200:
        with open(f'f{n}', 'wb') as f:
            f.write(b'x' * (16 << 20))
        n += 1
except OSError as e:
    print(n, e.errno)
'''
INODE_FLOOD = '''
import os
n = 0
try:
    while n < 100000:
        open(f'i{n}', 'w').close()
        n += 1
except OSError as e:
    print(n, e.errno)
'''
DEEP_TREE = "import os\nfor i in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint(i + 1)"


def _host_mounts_under(path):
    return [line for line in open("/proc/self/mountinfo") if path in line]


@needs_root
def test_disk_and_inode_floods_hit_the_private_tmpfs_budget(executor):
    assert executor.isolation["disk"] == "tmpfs"
    start = time.monotonic()
    flood, inodes, tree = executor.run([DISK_FLOOD, INODE_FLOOD, DEEP_TREE])
    assert time.monotonic() - start < 20
    files, err = map(int, flood.output.split())
    assert err == 28 and files <= 4  # ENOSPC at 64 MiB: four 16 MiB files at most
    count, err = map(int, inodes.output.split())
    assert err == 28 and count < 4096
    assert tree.output == "3000" and not tree.error
    assert _host_mounts_under(executor.base_dir) == []  # the tmpfs was never the host's
    no_leftovers(executor)
    innocent_results_are_right(executor)


def test_watched_quota_stops_a_disk_flood_and_cleans_a_deep_tree(monkeypatch):
    if os.access("/dev/shm", os.W_OK):  # deleting 3,000 directories on disk is slow
        monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")
    flood = "n = 0\nwhile True:\n    open(f'f{n}', 'wb').write(b'x' * (1 << 20))\n    n += 1"
    files = "n = 0\nwhile True:\n    open(f'i{n}', 'w').close()\n    n += 1"
    with light(disk_quota="watch", max_disk_bytes=8 << 20, max_disk_files=5000) as ex:
        start = time.monotonic()
        results = ex.run([flood, files, DEEP_TREE, "'after'"])
        assert time.monotonic() - start < 15
        for result in results[:2]:
            assert result.error and result.output.startswith("DiskLimitError"), result
            assert not result.timed_out
        assert results[2].output == "3000" and results[3].output == "after"
        assert ex.isolation["disk"] == "watch"
        no_leftovers(ex)
        base = ex.base_dir
    assert not os.path.exists(base)


def test_close_after_a_deep_tree_never_raises_and_leaves_nothing():
    with light() as ex:
        assert ex.run([DEEP_TREE])[0].output == "3000"
        base = ex.base_dir
    assert not os.path.exists(base)


# --- text and determinism --------------------------------------------------------------

def test_output_is_valid_utf8(executor):
    lone = executor.run(["print('a \\udc80 b \\ud800')"])[0]
    raw = executor.run(["import os\nfor fd in range(3, 256):\n    try:\n"
                        "        os.write(fd, b'\\xff\\xfe(\\xc3')\n    except OSError:\n"
                        "        pass\nprint('z')"])[0]
    for result in (lone, raw):
        result.output.encode("utf-8")  # no surrogates left
        assert "\ufffd" in result.output
    assert lone.output.startswith("a ") and raw.output.endswith("z")


SEEDED = ("import random\nimport numpy as np\n"
          "print(random.random(), np.random.randint(10**9), np.random.rand())")


def test_random_generators_are_seeded_from_the_program_text(executor):
    other = SEEDED + "  # another program"
    with PythonExecutor(num_workers=2, timeout_s=TIMEOUT_S, cache_size=0,
                        preload=("random", "numpy")) as preloaded, light() as lazy:
        runs = [preloaded.run([SEEDED, other]), preloaded.run([other, SEEDED])[::-1],
                lazy.run([SEEDED, other]), executor.run([SEEDED, other])]
    outputs = {tuple(r.output for r in run) for run in runs}
    assert len(outputs) == 1, outputs  # any worker, preloaded numpy or not, cache or not
    (seeded, other_out), = outputs
    assert seeded != other_out and len(seeded.split()) == 3


# --- identity, argv, visibility --------------------------------------------------------

def test_worker_argv_carries_no_pid_or_host_path(executor):
    executor.run(["0", "1"])
    for worker in executor._workers:
        cmdline = open(f"/proc/{worker.proc.pid}/cmdline", "rb").read().decode()
        assert str(os.getpid()) not in cmdline and executor.base_dir not in cmdline
        assert os.path.dirname(os.path.dirname(sandbox.__file__)) not in cmdline
    seen = executor.run(["import os, sys\nprint(sys.argv, sys.orig_argv, os.getppid())"])[0]
    assert str(os.getpid()) not in seen.output and executor.base_dir not in seen.output
    assert seen.output.endswith(" 0")  # no parent to name


@needs_root
def test_programs_run_unprivileged(executor):
    executor.run(["0", "1"])
    assert executor.isolation["uid"] == 65534
    ids = executor.run(["import os\nprint(os.getresuid(), os.getresgid(), os.getgroups())"])[0]
    assert ids.output == "(65534, 65534, 65534) (65534, 65534, 65534) []"
    for spare in spares(executor):
        status = proc_status(spare)
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
        assert status["Groups"].strip() == "" and status["NoNewPrivs"].strip() == "1"
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, caps


# --- a caller that is not root -----------------------------------------------------------

# Run as uid 65534: an executor whose programs have the same uid as their caller, so
# only seccomp and Landlock stand between them. Prints what it checked from outside.
UNPRIVILEGED_CALLER = r'''
import json, os, resource, sys, tempfile
from rstar_jax.verify.executor import PythonExecutor
mine = os.path.join(tempfile.mkdtemp(), "mine")
open(mine, "w").write("x")
os.chmod(mine, 0o600)
os.utime(mine, ns=(10**18, 10**18))
state = lambda: (os.stat(mine).st_mode, os.stat(mine).st_mtime_ns,
                 resource.getrlimit(resource.RLIMIT_NOFILE))
before = state()
attack = f"""
import os, resource
out = []
caller = {os.getpid()}
for name, fn in (('prlimit', lambda: resource.prlimit(caller, resource.RLIMIT_NOFILE, (5, 5))),
                 ('chmod', lambda: os.chmod({mine!r}, 0o777)),
                 ('utime', lambda: os.utime({mine!r}, (0, 0))),
                 ('signal', lambda: os.kill(caller, 9))):
    try:
        fn()
        out.append(name + ':ok')
    except OSError as e:
        out.append(name + ':' + type(e).__name__)
print(' '.join(out))
"""
flood = "n = 0\nwhile True:\n    open(f'f{n}', 'wb').write(b'x' * (1 << 20))\n    n += 1"
with PythonExecutor(num_workers=1, timeout_s=5.0, preload=(), max_disk_bytes=8 << 20) as ex:
    results = ex.run([attack, flood, "import os\nos.getresuid()", "6 * 7"])
    isolation = ex.isolation
    base = ex.base_dir
after = state()
print(json.dumps({"caller": os.getresuid(), "outputs": [r.output for r in results],
                  "isolation": isolation, "unchanged": before == after,
                  "base_removed": not os.path.exists(base)}))
'''


@needs_root
@needs_seccomp
def test_an_unprivileged_caller_keeps_its_limits_and_files_from_its_programs():
    import json
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__))))
    paths = [p for p in sys.path + [sys.prefix, sys.base_prefix]
             if p and os.path.isabs(p) and os.path.exists(p)]

    def become_nobody():  # in the child, before exec
        sandbox.unshare_mount_namespace()
        sandbox.expose_read_paths(paths + [repo], 65534, 65534)
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)

    out = subprocess.run([sys.executable, "-c", UNPRIVILEGED_CALLER], capture_output=True,
                         text=True, timeout=240, preexec_fn=become_nobody, cwd="/",
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "PYTHONPATH": repo, "HOME": "/tmp", "TMPDIR": "/tmp"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["caller"] == [65534] * 3
    assert report["isolation"]["uid"] == 65534 and report["isolation"]["disk"] == "watch"
    attack, flood, ids, after = report["outputs"]
    assert attack == ("prlimit:PermissionError chmod:PermissionError "
                      "utime:PermissionError signal:PermissionError")
    assert report["unchanged"] and report["base_removed"]
    assert flood.startswith("DiskLimitError") and ids == "(65534, 65534, 65534)"
    assert after == "42"
