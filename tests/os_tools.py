"""Programs from the OS packages that the operations kit's tests run (promtool, rsyslogd,
systemd-analyze). ``make test`` installs the missing ones first (``make tools``, the Makefile's
``OS_TOOLS``); a test that cannot find one fails, it never skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

SBIN = ("/usr/sbin", "/sbin")  # rsyslogd lives here, which a user's PATH may lack


def tool(name: str) -> str:
    """The path of ``name``; fails the test when it is not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} is not installed: `make tools` installs it (see OS_TOOLS in the Makefile)")
    return found


def run(
    argv: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion and return what it printed (stdout and stderr together)."""
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
