"""One-off steps in a forked child: the result comes back, the step's imports do not."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # In a fresh interpreter: the test process may be running threads, where
    # run_isolated runs the step in-process by design.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_result_comes_back_and_the_imports_stay_in_the_child() -> None:
    res = _run(
        """
        import os, sys
        from server.isolated import run_isolated

        def step(n):
            import colorsys  # something the parent has not imported
            return {"pid": os.getpid(), "n": n * 2}

        assert "colorsys" not in sys.modules
        got = run_isolated(step, 21)
        assert got["n"] == 42, got
        assert got["pid"] != os.getpid()
        assert "colorsys" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"  # printed once: the child never runs the caller's code


def test_a_failing_step_fails_here_with_its_own_exception() -> None:
    res = _run(
        """
        import os
        from server.isolated import run_isolated

        calls = []

        def step():
            calls.append(os.getpid())
            raise LookupError("no such thing")

        try:
            run_isolated(step)
        except LookupError as exc:
            assert str(exc) == "no such thing"
            assert calls == [os.getpid()], calls  # the parent's own (second) run
            print("raised")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "raised"


def test_with_threads_running_the_step_runs_here() -> None:
    res = _run(
        """
        import os, threading
        from server.isolated import run_isolated

        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            assert run_isolated(os.getpid) == os.getpid()
        finally:
            stop.set()
            t.join()
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
