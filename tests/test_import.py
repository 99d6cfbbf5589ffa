"""Importing ssm_edu is silent and local: it prints nothing, opens no network
connection and starts no process (so it cannot download anything).

Each check runs in a fresh interpreter with an audit hook (PEP 578) that
refuses, and reports, every socket connection, host-name lookup, URL opened
and process started, from Python or C code alike.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

GUARD = r"""
import sys
_refused = []
_WATCHED = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
            "urllib.Request", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn")
def _hook(event, args):
    if event.startswith(_WATCHED):
        _refused.append(f"{event} {str(args)[:200]}")
        raise RuntimeError(f"refused during import: {event}")
sys.addaudithook(_hook)
try:
    {body}
finally:
    if _refused:
        sys.__stderr__.write("REFUSED: " + "; ".join(_refused) + "\n")
"""


def _run(body: str, **env):
    code = GUARD.replace("{body}", body.strip().replace("\n", "\n    "))
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=environ)


@pytest.mark.slow
def test_import_prints_nothing_and_stays_offline():
    out = _run("import ssm_edu")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "" and out.stderr == "", f"import printed:\nstdout: {out.stdout!r}\nstderr: {out.stderr[-3000:]!r}"


@pytest.mark.slow
def test_every_module_imports_quietly():
    """The submodules the chapters import (widgets, plots, exercises, the Triton kernels) too."""
    body = """
import importlib, pkgutil
import ssm_edu, ssm_edu.kernels
names = [m.name for m in pkgutil.walk_packages(ssm_edu.__path__, "ssm_edu.")]
names += [m.name for m in pkgutil.walk_packages(ssm_edu.kernels.__path__, "ssm_edu.kernels.")]
assert "ssm_edu.kernels.scan" in names and "ssm_edu.widgets" in names, names
for name in names:
    importlib.import_module(name)
"""
    out = _run(body)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "" and out.stderr == "", f"imports printed:\nstdout: {out.stdout!r}\nstderr: {out.stderr[-3000:]!r}"


def test_the_guard_can_fail():
    """A connection attempt is refused and reported (the hook works)."""
    out = _run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert out.returncode != 0 and "REFUSED: socket." in out.stderr
