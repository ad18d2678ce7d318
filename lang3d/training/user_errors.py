"""How a failing ``lang3d`` / ``lightning`` command reports the error to the person who ran it.

The project's own errors say which file, key or weights are wrong and what to do; by the time they reach the
top level they are often wrapped (jsonargparse reports a failed model construction as "Does not validate against
any of the Union subtypes", with the cause inside). ``report`` finds the project's error in the exception chain,
prints it first in a few lines, and writes the full traceback to a log file (``LANG3D_TRACEBACK=1`` prints it).
"""
from __future__ import annotations

import os
import sys
import tempfile
import traceback
from typing import TextIO

PROJECT_PACKAGES = ("lang3d", "text4point", "pointbind", "sepe", "datamodules")


def _raised_by_project(error: BaseException) -> bool:
    """True when the innermost frame of ``error``'s traceback is in one of the project's packages."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "").split(".")[0] in PROJECT_PACKAGES


def project_error(error: BaseException) -> BaseException | None:
    """The outermost exception raised by the project's own code in ``error``'s chain (``__cause__``, else
    ``__context__``), or None when the project raised none of them."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _raised_by_project(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def wants_traceback() -> bool:
    return os.environ.get("LANG3D_TRACEBACK", "").strip().lower() in ("1", "true", "yes", "on")


def report(error: BaseException, stream: TextIO = sys.stderr) -> bool:
    """Prints the project's error of ``error``'s chain as ``error: <type>: <message>`` plus where the full
    traceback went, and returns True; returns False (printing nothing) when the chain holds no project error or
    ``LANG3D_TRACEBACK`` is set, so that the caller re-raises."""
    found = project_error(error)
    if found is None or wants_traceback():
        return False
    with tempfile.NamedTemporaryFile("w", prefix="lang3d-error-", suffix=".log", delete=False) as log:
        traceback.print_exception(error, file=log)
    stream.write(f"error: {type(found).__name__}: {found}\n"
                 f"(full traceback: {log.name}; set LANG3D_TRACEBACK=1 to print it)\n")
    return True
