"""User-facing errors.

Every problem a user can cause (a bad path, a corrupt file, missing external data, a module that
cannot be traced, bad calibration data) is raised as a :class:`QCompilerError` subclass with a
one-line message that names the problem and what to do about it. The CLI prints that line and
exits with code 2; anything else is a bug in qcompiler and keeps its traceback.
"""

from __future__ import annotations

import re


class QCompilerError(Exception):
    """A problem with the user's input, reported as one line."""


class ModelLoadError(QCompilerError):
    """A model file or object could not be read into the IR."""


class ExportError(QCompilerError):
    """A torch module, ExportedProgram or GraphModule could not be exported to ONNX."""


class UnknownExampleError(QCompilerError):
    """An ``--example`` name that qcompiler does not ship."""


class MissingDependencyError(QCompilerError):
    """An optional package that this feature needs is not installed."""


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
MAX_REASON_CHARS = 240


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, without colour codes, kept short.

    Used to quote a library's error inside qcompiler's one-line messages; the type name stands
    in when the message is empty.
    """
    text = ANSI_ESCAPE.sub("", str(error))
    line = next((" ".join(part.split()) for part in text.splitlines() if part.strip()), "")
    line = line.rstrip(" .") or type(error).__name__
    if len(line) > MAX_REASON_CHARS:
        line = line[: MAX_REASON_CHARS - 1] + "…"
    return line
