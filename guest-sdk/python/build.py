#!/usr/bin/env python3
"""Builds a Cairn behavior written in Python into a WebAssembly component.

    python3 guest-sdk/python/build.py examples/python/bank-account/bank_account.py \\
        -o target/wasm/python/bank-account.wasm

The module (a ``.py`` file) must define one ``cairn_guest.Entity`` subclass
(or name it with ``--entity``). The component exports
``cairn:entity/behavior@0.1.0`` (``wit/entity.wit``) and imports the entity
types and the WASI 0.2 interfaces componentize-py's CPython uses: stdout and
stderr (a ``print`` and an uncaught exception's traceback land in the node's
log), clocks (the command's timestamp), random, a file system without any
directory, and sockets. A Cairn node does not grant sockets; the build adds
a ``cairn:deny-by-default`` custom section naming them, which asks the node
to link them to stubs that deny every use (a socket call raises
``PermissionError``).

The build tool is installed on first use, pinned and checked against the
hashes of ``requirements-build.txt`` (componentize-py, from PyPI), into
``<repo>/target/python-tools/componentize-py-<version>`` (or
``$CAIRN_PYTHON_TOOLS``); later builds use it with no network. A component is
rebuilt only when an input changed (the behavior's directory, the SDK, the
WIT, the tool): its inputs' digest is kept in ``<output>.inputs``.

``--install-only`` installs the tool and exits. ``--wasi`` chooses how WASI
is handled: ``host`` (the default, above); ``stub``, componentize-py's
``--stub-wasi``: every WASI call traps inside the guest and the component
imports nothing but the entity types (``print`` goes to a sink, a
traceback is lost); ``import``, WASI imports without the section: a node
refuses the component at deploy, naming the socket interfaces (the option
exists to test that check). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parent
REPO = SDK_DIR.parent.parent
LOCK = SDK_DIR / "requirements-build.txt"
WIT_DIR = REPO / "wit"
WORLD = "entity"
#: The module componentize-py wraps; it defines ``Behavior`` for the export.
APP_MODULE = "cairn_component_app"
#: The component custom section that asks a node for deny-all stubs
#: (``cairn_host::runtime::DENY_BY_DEFAULT_SECTION``).
DENY_SECTION = "cairn:deny-by-default"
#: What the section asks for: the WASI socket interfaces CPython imports
#: (``cairn_host::runtime::DENY_BY_DEFAULT``).
DENY_BY_DEFAULT = (
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
)
#: The ``--wasi`` choices, the default first.
WASI_MODES = ("host", "stub", "import")


class BuildError(Exception):
    """A build step failed; the message says which and why."""


def pinned_version(lock: Path, package: str) -> str:
    """The version of ``package`` that ``lock`` pins."""
    m = re.search(rf"^{re.escape(package)}==([^\s\\]+)", lock.read_text(), re.M)
    if not m:
        raise BuildError(f"{lock} pins no {package} version")
    return m.group(1)


def tool_version() -> str:
    """The componentize-py version pinned by the lock file."""
    return pinned_version(LOCK, "componentize-py")


def tools_base() -> Path:
    """Where pinned Python tools are installed (``target/python-tools``)."""
    env = os.environ.get("CAIRN_PYTHON_TOOLS")
    return Path(env) if env else REPO / "target" / "python-tools"


def tools_dir() -> Path:
    """Where the pinned build tool is installed."""
    return tools_base() / f"componentize-py-{tool_version()}"


def install_locked(lock: Path, dest: Path, what: str, quiet: bool = False) -> Path:
    """Installs the wheels ``lock`` pins (hash-checked, no dependency
    resolution: the lock lists every package) into ``dest`` unless the same
    lock is already installed there; returns ``dest``, to put on sys.path."""
    lock_digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    stamp = dest / ".cairn-lock-sha256"
    if stamp.is_file() and stamp.read_text().strip() == lock_digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if not quiet:
        print(f"installing {what} into {dest}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".install-", dir=dest.parent) as tmp:
        staging = Path(tmp) / "tools"
        cmd = [
            sys.executable, "-m", "pip", "install",
            "--require-hashes", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--quiet",
            "--target", str(staging), "-r", str(lock),
        ]  # fmt: skip
        env = dict(os.environ, PIP_REQUIRE_VIRTUALENV="0", PIP_ROOT_USER_ACTION="ignore")
        r = subprocess.run(cmd, env=env)
        if r.returncode != 0:
            raise BuildError(f"installing {what} failed (pip exited with {r.returncode}): {' '.join(cmd)}")
        (staging / ".cairn-lock-sha256").write_text(lock_digest + "\n")
        # Another process may have finished the same install meanwhile and
        # may be running it: a complete install of this lock is never
        # replaced (ours is dropped with the temporary directory). An
        # install of another lock is moved aside first, so `dest` is always
        # either absent or whole.
        if not (stamp.is_file() and stamp.read_text().strip() == lock_digest):
            if dest.exists():
                dest.rename(Path(tmp) / "old")
            try:
                staging.rename(dest)
            except OSError:
                if not (stamp.is_file() and stamp.read_text().strip() == lock_digest):
                    raise
    if not quiet:
        print(f"installed in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return dest


def install_tools(quiet: bool = False) -> Path:
    """Installs the pinned componentize-py (hash-checked) unless the same
    lock is already installed; returns the directory to put on sys.path."""
    return install_locked(LOCK, tools_dir(), f"componentize-py {tool_version()}", quiet)


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def custom_section(name: str, data: bytes) -> bytes:
    """A WebAssembly custom section (id 0): valid at any place of a
    component's top level, so it can be appended to a finished component."""
    raw = name.encode()
    body = _leb128(len(raw)) + raw + data
    return b"\x00" + _leb128(len(body)) + body


def deny_by_default_section() -> bytes:
    """The section that asks a node to link :data:`DENY_BY_DEFAULT` to
    stubs that deny every use."""
    return custom_section(DENY_SECTION, "\n".join(DENY_BY_DEFAULT).encode() + b"\n")


def _py_files(d: Path) -> list[Path]:
    return sorted(
        p
        for p in d.rglob("*.py")
        if "__pycache__" not in p.parts and not any(part.startswith(".") for part in p.relative_to(d).parts)
    )


def inputs_digest(module: Path, entity: str | None, wasi: str = "host") -> str:
    """A digest of everything the component is built from."""
    h = hashlib.sha256()
    h.update(f"componentize-py {tool_version()}\nentity {entity}\nmodule {module.name}\n".encode())
    h.update(f"wasi {wasi}\n".encode())
    h.update(Path(__file__).read_bytes())
    for d in (WIT_DIR, SDK_DIR / "cairn_guest", module.parent):
        for p in sorted(d.rglob("*.wit")) + _py_files(d):
            h.update(str(p.relative_to(d)).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def build(
    module: Path, output: Path, entity: str | None, force: bool, quiet: bool, wasi: str = "host"
) -> bool:
    """Builds ``module`` into ``output``; returns False when it was up to date."""
    module = module.resolve()
    output = output.resolve()
    if wasi not in WASI_MODES:
        raise BuildError(f"--wasi={wasi}: expected one of {', '.join(WASI_MODES)}")
    if module.suffix != ".py" or not module.is_file():
        raise BuildError(f"{module} is not a Python file")
    digest = inputs_digest(module, entity, wasi)
    stamp = output.with_name(output.name + ".inputs")
    if not force and output.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        if not quiet:
            print(f"{output} is up to date", file=sys.stderr)
        return False
    tools = install_tools(quiet)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cairn-pybuild-") as tmp:
        tmp_path = Path(tmp)
        app = tmp_path / "app"
        shutil.copytree(
            SDK_DIR / "cairn_guest", app / "cairn_guest", ignore=shutil.ignore_patterns("__pycache__")
        )
        entity_arg = repr(entity) if entity else "None"
        (app / f"{APP_MODULE}.py").write_text(
            f'"""Generated by guest-sdk/python/build.py: exports {module.stem}."""\n'
            "from cairn_guest.component import behavior_class, drop_output, find_entity\n"
            # With WASI stubbed, a write to stdout would trap: drop output.
            + ("drop_output()\n" if wasi == "stub" else "")
            + f"import {module.stem} as _behavior\n"
            + f"Behavior = behavior_class(find_entity(_behavior, {entity_arg}))\n"
        )
        # componentize-py adds a virtualenv's site-packages to the path (or
        # the interpreter's, failing that): point it at an empty one, so
        # nothing from this machine lands in the component.
        venv = tmp_path / "venv"
        (venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages").mkdir(
            parents=True
        )
        partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
        cmd = [
            sys.executable, "-c",
            "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
            "-d", str(WIT_DIR), "-w", WORLD,
            "componentize", *(["--stub-wasi"] if wasi == "stub" else []),
            "-p", str(app), "-p", str(module.parent),
            APP_MODULE, "-o", str(partial),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(tools), VIRTUAL_ENV=str(venv), PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONHOME", None)
        r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise BuildError(
                f"componentize-py failed to build {module} (exit {r.returncode}):\n{r.stdout}{r.stderr}"
            )
        if wasi == "host":
            with partial.open("ab") as f:
                f.write(deny_by_default_section())
        partial.replace(output)
    stamp.write_text(digest + "\n")
    if not quiet:
        size = output.stat().st_size / 1e6
        print(f"built {output} ({size:.1f} MB) in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("module", nargs="?", type=Path, help="the behavior's .py file")
    p.add_argument("-o", "--output", type=Path, help="the component to write (default: <module>.wasm)")
    p.add_argument("--entity", help="the Entity subclass to export, if the module defines several")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--install-only", action="store_true", help="install the pinned tool and exit")
    p.add_argument(
        "--wasi",
        choices=WASI_MODES,
        default="host",
        help="host: keep componentize-py's WASI imports and ask the node for deny-all socket stubs "
        "(output reaches the node's log; default); stub: every WASI call traps, the component imports "
        "only the entity types (output is dropped); import: WASI imports without asking for socket "
        "stubs (a node refuses the component; for tests)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.install_only:
            print(install_tools(a.quiet))
            return 0
        if a.module is None:
            p.error("the behavior's module is required")
        out = a.output or a.module.with_suffix(".wasm")
        build(a.module, out, a.entity, a.force, a.quiet, a.wasi)
    except BuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
