"""PythonExecutor: reference output semantics, caching, and hostile programs.

Expected observations are written out by hand from the reference's rules
(rstar_reference.md §3.4-3.5). Each hostile program runs in its own test, which then
checks that the pool is still healthy, that no private directory was left behind and
that the main process is unharmed.
"""

import itertools
import os
import threading
import time

import pytest

from rstar_jax.verify import sandbox
from rstar_jax.verify.executor import ExecResult, PythonExecutor

TIMEOUT_S = 2.0
MAX_RESULT = 4096
_fresh = itertools.count()


@pytest.fixture(scope="module")
def executor():
    with PythonExecutor(num_workers=2, timeout_s=TIMEOUT_S) as ex:
        yield ex
    assert not os.path.exists(ex.base_dir), "close() must delete the executor's temp dir"


def run1(ex, program):
    return ex.run([program])[0]


def assert_no_leftovers(ex):
    """No program's private directory survives `run`: what is left in the base directory
    are the (empty) directories of the workers' pre-forked children, one per worker."""
    left = os.listdir(ex.base_dir)
    assert len(left) <= len(ex._workers) + ex.cache_info()["worker_restarts"], left
    for name in left:
        assert os.listdir(os.path.join(ex.base_dir, name)) == [], name


def assert_healthy(ex):
    """The pool still answers correctly, with no private directory left behind."""
    n = next(_fresh) + 1000  # a new program each time, so this is not a cache hit
    results = ex.run([f"x = {n}\nx * 2", f"print({n} + 1)"])
    assert [r.output for r in results] == [str(2 * n), str(n + 1)]
    assert_no_leftovers(ex)


@pytest.fixture
def main_process_unharmed():
    def snapshot():
        return os.getcwd(), {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    before = snapshot()
    yield
    assert snapshot() == before


# --- semantics -------------------------------------------------------------------

@pytest.mark.parametrize("program, expected", [
    ("x = 3\nx * 2", "6"),                                      # trailing expression
    ("print('a', 1)", "a 1"),                                   # print capture
    ("x = 1\nprint('ignored')\nx + 1", "2"),                    # a value wins over stdout
    ("print(5)\ny = 1", ""),                                   # print not last: lost
    ("a = 2\nprint(a)\nb = a + 1\nprint(b * 2)", "a: 2\nb * 2: 6"),  # several prints
    ("print(1)\nprint(2)\nprint(3)\nx = 1/0", "1: 1\n2: 2\n3: 3"),  # tail never runs
    ("for i in range(3):\n    print(i)", "0\n1\n2"),
    ("print(1/3)", "0.3333"),                                   # float text rounded
    ("print(2.5)", "2.5"),
    ("print(10)", "10"),
    ("1/3", "0.3333333333333333"),                              # values are not
    ("'3.14159265'", "3.1416"),                                 # ... unless text
    ("print(10**20)", "1e+20"),                                 # reference quirk
    # truncation keeps the last 512 characters, print's "\n" included, then strips it
    ("print('a' * 600 + 'b' * 600)", "a" * 512 + "..." + "b" * 511),
    ("```python\nprint(7)\n```", "7"),                          # sanitised
    ("", ""),
    ("from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 4, x))",
     "[-2, 2]"),
    ("import numpy as np\nprint(np.arange(5).sum())", "10"),
    ("import scipy.optimize as so\nprint(so.brentq(lambda t: t*t - 2, 0, 2))", "1.4142"),
    ("import math\nmath.comb(10, 3)", "120"),
])
def test_reference_output_semantics(executor, program, expected):
    result = run1(executor, program)
    assert result.output == expected
    assert not result.error and not result.timed_out and not result.raised


@pytest.mark.parametrize("program, expected, error", [
    ("x = [1]\nx[5]", "IndexError: list index out of range", True),
    ("raise ValueError('bad value')", "ValueError: bad value", True),
    ("x = (", "SyntaxError: '(' was never closed (<unknown>, line 1)", True),
    ("print(1)\nprint(undefined_name)", "NameError: name 'undefined_name' is not defined",
     True),
    # `error` is what happened to the process: any uncaught exception is one (the
    # reference's substring rule, under which this one is not, lives in the search).
    ("raise Exception('no luck')", "Exception: no luck", True),
])
def test_exceptions_are_type_colon_message(executor, program, expected, error):
    result = run1(executor, program)
    assert result.output == expected
    assert result.raised and result.error is error and not result.timed_out


def test_error_in_output_text_is_not_an_error(executor):
    # The substring rule (§3.5) is applied by the search, behind its switch.
    result = run1(executor, "print('no ERROR here')")
    assert result.output == "no ERROR here" and not result.error and not result.raised


def test_each_program_gets_a_fresh_namespace_and_modules(executor):
    first, second = executor.run(["leak = 41\nimport math\nmath.pi = 3\nleak",
                                  "import math\nmath.pi"])
    assert first.output == "41"
    assert second.output == "3.141592653589793"
    assert run1(executor, "leak + 1").output == "NameError: name 'leak' is not defined"


def test_files_live_in_a_private_cwd_that_is_removed(executor):
    program = ("import os\nopen('note.txt', 'w').write('hi')\n"
               "print(open('note.txt').read(), os.getcwd())")
    text, cwd = run1(executor, program).output.split()
    assert text == "hi" and os.path.dirname(cwd) == executor.base_dir
    assert not os.path.exists(cwd)
    assert_no_leftovers(executor)


def test_cache_hits_return_the_stored_result(executor):
    program = f"import time\ntime.time()  # {next(_fresh)}"
    before = executor.cache_info()
    a, b = executor.run([program, program])  # duplicates in one batch run once
    c = run1(executor, program)
    assert a is b is c
    info = executor.cache_info()
    assert info["hits"] - before["hits"] == 1
    assert info["misses"] - before["misses"] == 2


def test_cache_is_bounded_lru():
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, cache_size=2, preload=()) as ex:
        stamp = "import time\ntime.time()  # {}"
        a = run1(ex, stamp.format("a"))
        ex.run([stamp.format("b")])
        assert run1(ex, stamp.format("a")) is a  # a is now most recent
        ex.run([stamp.format("c")])              # evicts b
        assert ex.cache_info()["size"] == 2
        assert run1(ex, stamp.format("a")) is a
        misses = ex.cache_info()["misses"]
        run1(ex, stamp.format("b"))
        assert ex.cache_info()["misses"] == misses + 1


def test_results_keep_batch_order_across_workers(executor):
    programs = [f"import time\ntime.sleep({0.01 * (i % 3)})\n{i} * {i}" for i in range(9)]
    assert [r.output for r in executor.run(programs)] == [str(i * i) for i in range(9)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        PythonExecutor(num_workers=0)
    with PythonExecutor(num_workers=1, preload=()) as ex:
        with pytest.raises(TypeError, match="wrap it in a list"):
            ex.run("print(1)")
        with pytest.raises(TypeError, match=r"programs\[1\] must be str"):
            ex.run(["1", 2])
    with pytest.raises(RuntimeError, match="after close"):
        ex.run(["1"])


# --- hostile programs --------------------------------------------------------------

def _check_hostile(ex, program, *, expect_timeout=False, output_prefix=None):
    start = time.monotonic()
    result = run1(ex, program)
    elapsed = time.monotonic() - start
    assert isinstance(result, ExecResult)
    assert result.error, result
    if expect_timeout is not None:
        assert result.timed_out is expect_timeout, result
    assert len(result.output) <= MAX_RESULT
    assert result.duration_s <= TIMEOUT_S + 1.0
    assert elapsed <= TIMEOUT_S + 5.0
    if output_prefix is not None:
        assert result.output.startswith(output_prefix), result.output
    assert_healthy(ex)
    return result


def test_infinite_loop_times_out(executor, main_process_unharmed):
    result = _check_hostile(executor, "while True:\n    pass", expect_timeout=True)
    assert result.output == ("TimeoutError: Execution of the code snippet has timed out "
                             "for exceeding 2 seconds.")


def test_long_sleep_times_out(executor, main_process_unharmed):
    _check_hostile(executor, "import time\ntime.sleep(600)", expect_timeout=True)


def test_output_flood_is_cut(executor, main_process_unharmed):
    _check_hostile(executor, "while True:\n    print('x' * 1000)",
                   output_prefix="OutputLimitError")


def test_single_huge_print_is_cut(executor, main_process_unharmed):
    _check_hostile(executor, "print('y' * 10**8)", output_prefix="OutputLimitError")


def test_memory_bomb_gets_memory_error(executor, main_process_unharmed):
    _check_hostile(executor, "x = bytearray(8 * 1024**3)", output_prefix="MemoryError")


def test_growing_list_memory_bomb(executor, main_process_unharmed):
    # Filling 1 GiB takes about 3 s on a slow VM, so either limit may end it first.
    result = _check_hostile(executor, "x = []\nwhile True:\n    x.append(' ' * 10**6)",
                            expect_timeout=None)
    assert result.timed_out or result.output.startswith("MemoryError")


def test_fork_bomb_is_refused(executor, main_process_unharmed):
    if sandbox._ARCH not in sandbox._SYSCALLS:
        pytest.skip(f"no seccomp syscall table for {sandbox._ARCH}")
    _check_hostile(executor, "import os\nwhile True:\n    os.fork()",
                   output_prefix="PermissionError")
    for worker in executor._workers:  # no process survived under any worker
        pid = worker.proc.pid
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        assert len(children) <= 1, children  # only the pre-forked spare
        for child in children:
            assert open(f"/proc/{child}/task/{child}/children").read().strip() == ""


def test_subprocess_is_refused(executor, main_process_unharmed):
    _check_hostile(executor, "import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])",
                   output_prefix="PermissionError")


def test_write_outside_private_dir_is_refused(executor, tmp_path, main_process_unharmed):
    if sandbox.landlock_abi() == 0:
        pytest.skip("Landlock unavailable on this kernel")
    target = tmp_path / "escaped.txt"
    _check_hostile(executor, f"open({str(target)!r}, 'w').write('x')",
                   output_prefix="PermissionError")
    assert not target.exists()


def test_parent_environment_is_invisible(main_process_unharmed, monkeypatch):
    monkeypatch.setenv("RSTAR_TEST_SECRET", "hunter2-token")
    program = ("import os\nleaked = [k for k in os.environ if 'SECRET' in k]\n"
               f"try:\n    data = open('/proc/{os.getpid()}/environ', 'rb').read()\n"
               "except OSError as e:\n    data = b''\n"
               "print(leaked, b'hunter2' in data)")
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, preload=()) as ex:
        assert run1(ex, program).output == "[] False"


def test_network_is_refused(executor, main_process_unharmed):
    _check_hostile(executor, "import socket\nsocket.create_connection(('127.0.0.1', 22), "
                   "timeout=1)", output_prefix="PermissionError")


def test_signals_to_other_processes_are_refused(executor, main_process_unharmed):
    _check_hostile(executor, f"import os\nos.kill({os.getpid()}, 9)",
                   output_prefix="PermissionError")
    _check_hostile(executor, "import os\nos.kill(-1, 9)", output_prefix="PermissionError")


def test_os_exit_reports_an_error(executor, main_process_unharmed):
    _check_hostile(executor, "import os\nos._exit(0)", output_prefix="SandboxError")


def test_sys_exit_reports_an_error(executor, main_process_unharmed):
    result = _check_hostile(executor, "import sys\nsys.exit(3)")
    assert result.output == "SystemExit: 3"


def test_segfault_through_ctypes(executor, main_process_unharmed):
    result = _check_hostile(executor, "import ctypes\nctypes.string_at(0)",
                            output_prefix="SandboxError")
    assert "SIGSEGV" in result.output


def test_deep_recursion(executor, main_process_unharmed):
    _check_hostile(executor, "def f(n):\n    return f(n + 1)\nf(0)",
                   output_prefix="RecursionError")


def test_deep_recursion_past_raised_limit(executor, main_process_unharmed):
    result = run1(executor, "import sys\nsys.setrecursionlimit(10**7)\n"
                            "def f(n):\n    return f(n + 1)\nf(0)")
    assert result.error and len(result.output) <= MAX_RESULT  # crash or timeout
    assert_healthy(executor)


def test_huge_integer_power(executor, main_process_unharmed):
    result = run1(executor, "x = 10 ** (10 ** 10)\nx % 7")
    assert result.error and len(result.output) <= MAX_RESULT  # MemoryError or timeout
    assert result.duration_s <= TIMEOUT_S + 1.0
    assert_healthy(executor)


def test_huge_file_is_cut_by_file_size_limit(executor, main_process_unharmed):
    _check_hostile(executor, "open('big', 'wb').write(b'x' * (64 << 20))",
                   output_prefix="OSError: [Errno 27] File too large")


def test_pool_survives_a_worker_killed_while_idle(main_process_unharmed):
    with PythonExecutor(num_workers=2, timeout_s=TIMEOUT_S, preload=()) as ex:
        assert [r.output for r in ex.run(["1 + 1", "2 + 2"])] == ["2", "4"]
        for worker in ex._workers:
            worker.proc.kill()
            worker.proc.wait()
        assert [r.output for r in ex.run(["3 + 3", "4 + 4", "5 + 5"])] == ["6", "8", "10"]
        assert ex.cache_info()["worker_restarts"] == 2


def test_pool_survives_a_worker_killed_mid_program(main_process_unharmed):
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, preload=()) as ex:
        ex.run(["0"])  # started
        pid = ex._workers[0].proc.pid
        killer = threading.Timer(0.5, os.kill, (pid, 9))
        killer.start()
        result = run1(ex, "import time\ntime.sleep(1.5)\n1")
        killer.join()
        assert result.error and result.output.startswith("SandboxError")
        assert run1(ex, "import time\ntime.sleep(1.5)\n1").output == "1"  # not cached
        assert run1(ex, "6 * 7").output == "42"


# --- pre-forked children ---------------------------------------------------------------

def _worker_children(worker):
    pid = worker.proc.pid
    return open(f"/proc/{pid}/task/{pid}/children").read().split()


def test_a_preforked_child_runs_exactly_one_program(main_process_unharmed):
    # One worker: B runs in the child forked while A was running, C in the next one.
    a = ("import os, sys, math\nopen('mark', 'w').write('a')\nmath.tau = 0\n"
         "sys.modules['leak'] = math\ng = 1\nprint(os.getpid(), os.getcwd())")
    probe = ("import os, sys, math\nprint(os.getpid(), os.getcwd(), os.listdir('.'), "
             "math.tau, 'leak' in sys.modules, 'g' in globals())")
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, preload=()) as ex:
        first, second = ex.run([a, probe])
        third = run1(ex, probe + "  # again")
        pid_a, cwd_a = first.output.split()
        seen = []
        for result in (second, third):
            pid, cwd, rest = result.output.split(" ", 2)
            assert rest == "[] 6.283185307179586 False False", result.output
            seen.append((pid, cwd))
        pids = {pid_a} | {pid for pid, _ in seen}
        cwds = {cwd_a} | {cwd for _, cwd in seen}
        assert len(pids) == 3 and len(cwds) == 3  # a new process and directory each
        assert not any(os.path.exists(cwd) for cwd in cwds)
        assert_no_leftovers(ex)


def test_the_spare_child_is_confined_before_it_gets_a_program(main_process_unharmed):
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, preload=()) as ex:
        ex.run(["1"])
        worker = ex._workers[0]
        deadline = time.monotonic() + 30.0
        while True:  # the spare confines itself right after its fork; wait for that
            (spare,) = _worker_children(worker)
            status = dict(line.split(":\t", 1) for line in
                          open(f"/proc/{spare}/status").read().splitlines() if ":\t" in line)
            if status.get("Seccomp", "0").strip() == "2" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if sandbox._ARCH in sandbox._SYSCALLS:
            assert status["Seccomp"].strip() == "2"  # filter mode, installed
        assert status["NoNewPrivs"].strip() == "1"
        assert int(status["CapEff"], 16) == 0
        assert os.path.dirname(os.readlink(f"/proc/{spare}/cwd")) == ex.base_dir
        # The spare is the process that runs the next program, and only that one.
        assert run1(ex, "import os\nos.getpid()").output == spare
        assert _worker_children(worker) != [spare]


def test_a_spare_killed_while_waiting_is_replaced(main_process_unharmed):
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, preload=()) as ex:
        ex.run(["1"])
        (spare,) = _worker_children(ex._workers[0])
        os.kill(int(spare), 9)
        deadline = time.monotonic() + 30.0
        while "zombie" not in open(f"/proc/{spare}/status").read():  # not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert run1(ex, "2 + 2").output == "4"
        assert ex.cache_info()["worker_restarts"] == 0
        assert_no_leftovers(ex)


def test_programs_queued_behind_a_dead_worker_are_retried(main_process_unharmed):
    with PythonExecutor(num_workers=1, timeout_s=TIMEOUT_S, preload=()) as ex:
        ex.run(["0"])  # started
        killer = threading.Timer(0.5, os.kill, (ex._workers[0].proc.pid, 9))
        killer.start()
        results = ex.run(["import time\ntime.sleep(1.5)\n1", "6 * 7", "7 * 8"])
        killer.join()
        assert results[0].output.startswith("SandboxError")
        assert [r.output for r in results[1:]] == ["42", "56"]
        assert ex.cache_info()["worker_restarts"] == 1
