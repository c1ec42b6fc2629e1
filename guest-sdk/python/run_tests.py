#!/usr/bin/env python3
"""Runs the Python test suites of the guest SDK and of the Python examples
with the pinned pytest:

    python3 guest-sdk/python/run_tests.py                     # every suite
    python3 guest-sdk/python/run_tests.py examples/python/standing-order
    python3 guest-sdk/python/run_tests.py --runner unittest   # no pytest

pytest and the packages it needs are installed on first use, pinned and
checked against the hashes of ``requirements-test.txt`` (PyPI), into
``<repo>/target/python-tools/pytest-<version>`` (or
``$CAIRN_PYTHON_TOOLS``), like build.py installs componentize-py; later runs
need no network. ``--runner unittest`` runs ``python3 -m unittest discover``
instead (the suites are unittest test cases; pytest runs them too).

A suite is a directory: ``guest-sdk/python/tests`` (run from
``guest-sdk/python``) or an example's directory ``examples/python/NAME``.
Each runs in its own process (examples share module names across versions).
Exits non-zero when any suite fails or is missing, and (with pytest) when
one collects no test.
Standard library only. ``cargo test -p cairn-tests --test python_suites``
runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import build

SDK_DIR = Path(__file__).resolve().parent
REPO = SDK_DIR.parent.parent
TEST_LOCK = SDK_DIR / "requirements-test.txt"


def suites() -> list[Path]:
    """Every suite: the SDK's tests, then each Python example's directory."""
    examples = REPO / "examples" / "python"
    return [SDK_DIR / "tests"] + sorted(
        d for d in examples.iterdir() if d.is_dir() and any(d.glob("test_*.py"))
    )


def install_pytest(quiet: bool) -> Path:
    """The directory holding the pinned pytest (installed if needed)."""
    version = build.pinned_version(TEST_LOCK, "pytest")
    return build.install_locked(
        TEST_LOCK, build.tools_base() / f"pytest-{version}", f"pytest {version}", quiet
    )


def run_suite(suite: Path, runner: str, tools: Path | None) -> int:
    """Runs one suite; returns its exit status (the output goes to ours)."""
    # The SDK's tests import `_support` from their directory and run from
    # the SDK's root; an example's tests run from the example's directory.
    cwd = suite.parent if suite == SDK_DIR / "tests" else suite
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    if runner == "pytest":
        assert tools is not None
        env["PYTHONPATH"] = str(tools)
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--rootdir", str(cwd), str(suite),
        ]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "unittest", "discover", "-s", str(suite), "-t", str(suite)]
        if suite == SDK_DIR / "tests":
            cmd += ["-p", "test_*.py"]
    shown = suite.relative_to(REPO) if suite.is_relative_to(REPO) else suite
    print(f"== {shown}: {' '.join(cmd[1:4])} ...", flush=True)
    return subprocess.run(cmd, cwd=cwd, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", nargs="*", type=Path, help="suite directories (default: all)")
    p.add_argument("--runner", choices=("pytest", "unittest"), default="pytest")
    p.add_argument("-q", "--quiet", action="store_true", help="say nothing about installing")
    a = p.parse_args(argv)
    chosen = [s.resolve() for s in a.suite] or suites()
    try:
        tools = install_pytest(a.quiet) if a.runner == "pytest" else None
    except build.BuildError as e:
        print(f"run_tests.py: {e}", file=sys.stderr)
        return 2
    failed = []
    for suite in chosen:
        if not suite.is_dir():
            print(f"run_tests.py: {suite} is not a directory", file=sys.stderr)
            failed.append(suite)
            continue
        if run_suite(suite, a.runner, tools) != 0:
            failed.append(suite)
    if failed:
        names = ", ".join(str(s) for s in failed)
        print(f"run_tests.py: {len(failed)} of {len(chosen)} suites failed: {names}", file=sys.stderr)
        return 1
    print(f"run_tests.py: {len(chosen)} suites passed ({a.runner})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
