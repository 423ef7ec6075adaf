"""configure_threads: the CPU thread rule every script applies first."""
import ast
import os

import pytest
import torch

from infra.devices import (DEFAULT_THREADS, THREADS_ENV, ThreadSettings, busy_cores, configure_threads, idle_cores,
                           thread_count, usable_cores)
from infra.errors import UserError
from tests.helpers import REPO, assert_user_error, run_script


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_default_is_one_thread_whatever_the_machine():
    # fixed, not guessed from the load: a run and its resumed continuation must use the same count
    assert DEFAULT_THREADS == 1
    assert thread_count(environ={}) == (1, "default")


def test_sundae_threads_is_respected_and_applied():
    settings = configure_threads(environ={THREADS_ENV: "2"})
    assert settings == ThreadSettings(2, torch.get_num_interop_threads(), THREADS_ENV)
    assert torch.get_num_threads() == 2
    assert configure_threads(environ={THREADS_ENV: "1"}).intra_op == torch.get_num_threads() == 1


def test_all_means_every_usable_core():
    assert thread_count(environ={THREADS_ENV: "all"}) == (usable_cores(), THREADS_ENV)
    assert thread_count(environ={THREADS_ENV: " ALL "})[0] == usable_cores()
    assert thread_count("all")[0] == usable_cores()


def test_idle_is_the_usable_cores_less_the_busy_ones(monkeypatch):
    monkeypatch.setattr("infra.devices.usable_cores", lambda: 4)
    assert [idle_cores(busy) for busy in (0.0, 0.4, 0.6, 1.2, 2.0, 3.6, 9.0)] == [4, 4, 3, 3, 2, 1, 1]
    monkeypatch.setattr("infra.devices.busy_cores", lambda: 1.1)
    assert idle_cores() == 3
    assert thread_count(environ={THREADS_ENV: "idle"}) == (3, THREADS_ENV)
    assert thread_count(" Idle ")[0] == 3


def test_idle_falls_back_to_the_load_average_where_proc_stat_is_unreadable(monkeypatch):
    monkeypatch.setattr("infra.devices.usable_cores", lambda: 4)
    monkeypatch.setattr("infra.devices.busy_cores", lambda: None)
    monkeypatch.setattr("os.getloadavg", lambda: (2.2, 5.0, 5.0))  # the 1-minute reading decides
    assert idle_cores() == 2


def write_stat(path, user, idle, iowait=0, system=0):
    path.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")


def test_busy_cores_are_the_non_idle_share_of_the_interval(tmp_path, monkeypatch):
    # two samples of /proc/stat's first line, half a second apart: 150 of 200 jiffies idle (iowait
    # counts as idle) on a 2-core machine is half a core busy
    stat = tmp_path / "stat"
    write_stat(stat, user=1000, idle=5000)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("time.sleep", lambda s: write_stat(stat, user=1030, system=20, idle=5120, iowait=30))
    assert busy_cores(stat_path=stat) == pytest.approx(2 * (1 - 150 / 200))
    monkeypatch.setattr("time.sleep", lambda s: None)  # no time passed: no reading
    assert busy_cores(stat_path=stat) is None
    assert busy_cores(stat_path=tmp_path / "absent") is None


def test_busy_cores_read_this_machine():
    busy = busy_cores(interval=0.05)
    assert busy is None or 0 <= busy <= (os.cpu_count() or 1)


def test_omp_num_threads_is_the_fallback():
    assert thread_count(environ={"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    # OpenMP's nested form: one count per level, the first is the outer one
    assert thread_count(environ={"OMP_NUM_THREADS": "4,2"}) == (4, "OMP_NUM_THREADS")


def test_precedence_argument_then_sundae_threads_then_omp():
    env = {THREADS_ENV: "2", "OMP_NUM_THREADS": "3"}
    assert thread_count(environ=env) == (2, THREADS_ENV)
    assert thread_count(5, environ=env) == (5, "argument")
    assert thread_count(environ={THREADS_ENV: "", "OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")  # empty = unset


@pytest.mark.parametrize("name, value", [
    (THREADS_ENV, "0"), (THREADS_ENV, "-1"), (THREADS_ENV, "two"), (THREADS_ENV, "1.5"), (THREADS_ENV, "2 cores"),
    ("OMP_NUM_THREADS", "all"), ("OMP_NUM_THREADS", "idle"), ("OMP_NUM_THREADS", "abc"), ("OMP_NUM_THREADS", "0"),
])
def test_bad_values_are_one_line_user_errors(name, value):
    with pytest.raises(UserError) as info:
        configure_threads(environ={name: value})
    message = str(info.value)
    assert "\n" not in message and name in message and repr(value) in message


@pytest.mark.parametrize("value", [0, -2, True, "x"])
def test_bad_arguments_are_user_errors(value):
    with pytest.raises(UserError, match="not a thread count"):
        thread_count(value, environ={})


def test_calling_twice_is_harmless():
    # inter-op threads can be set once per process; later calls leave them and still set intra-op
    first = configure_threads(environ={})
    second = configure_threads(2, environ={})
    assert (first.intra_op, second.intra_op) == (1, 2)
    assert second.inter_op == first.inter_op == torch.get_num_interop_threads() >= 1


SCRIPTS = ["train.py", "train-vqgan.py", "sample.py", "inpaint.py", "sample-interactive.py", "evaluate.py",
           "generate-discrete-mnist.py", "generate-latents.py", "recon-vqgan.py"]


def before_any_torch_work(node):
    """What may come before configure_threads() in a main: the argument parsing, imports, and checks
    of the arguments (`if ...: raise ...`, or a call of a check_* function), so that a usage mistake
    is answered before torch is imported."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
        return getattr(node.value.func, "id", None) == "parse_args"
    if isinstance(node, ast.If):
        return not node.orelse and all(isinstance(n, ast.Raise) for n in node.body)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return getattr(node.value.func, "id", "").startswith("check_")
    return False


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_configures_threads_first(script):
    """configure_threads() is main's first statement, or follows only the argument parsing, its
    checks and imports."""
    tree = ast.parse((REPO / script).read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    first = next(node for node in main.body if not before_any_torch_work(node))
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
    assert getattr(first.value.func, "id", None) == "configure_threads" and not first.value.args


def test_a_bad_sundae_threads_stops_a_script_with_one_line(tmp_path):
    proc = run_script("generate-discrete-mnist.py", "digits", tmp_path / "d", env={THREADS_ENV: "many"})
    assert_user_error(proc, "SUNDAE_THREADS='many'")
