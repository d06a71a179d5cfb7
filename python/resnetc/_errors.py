"""The exceptions and diagnostics resnetc raises and returns (the native module builds them from here)."""

from typing import List, NamedTuple, Optional


class _Located(NamedTuple):
    file: Optional[str]
    line: Optional[int]
    column: Optional[int]
    message: str


class Diagnostic(_Located):
    """One problem found in a spec, a weights file or a Keras config.

    A tuple ``(file, line, column, message)``; ``file``, ``line`` and ``column`` are ``None`` for a problem
    that belongs to no place in a spec (a weights file, a Keras config: the message then begins with its
    path). ``message`` includes the ``= note:`` lines that ``resnetc check`` prints under it. ``severity`` is
    ``"error"`` or ``"warning"``. ``str(d)`` is the line ``resnetc check`` prints.
    """

    severity: str

    def __new__(cls, file: Optional[str], line: Optional[int], column: Optional[int], message: str,
                severity: str = "error") -> "Diagnostic":
        self = super().__new__(cls, file, line, column, message)
        self.severity = severity
        return self

    def __getnewargs__(self):  # type: ignore[override]
        return (self.file, self.line, self.column, self.message, self.severity)

    def __repr__(self) -> str:
        return (f"Diagnostic(file={self.file!r}, line={self.line!r}, column={self.column!r}, "
                f"message={self.message!r}, severity={self.severity!r})")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}: " if self.file is not None else ""
        return f"{where}{self.severity}: {self.message}"


class SpecError(ValueError):
    """A spec, weights file or Keras config that resnetc refuses.

    ``str(e)`` is the located text ``resnetc check`` prints (``FILE:LINE:COL: error: ...``, every problem
    found, warnings included); ``e.diagnostics`` lists the same as :class:`Diagnostic` tuples.
    """

    diagnostics: List[Diagnostic]

    def __init__(self, message: str, diagnostics: List[Diagnostic]) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics)

    @property
    def errors(self) -> List[Diagnostic]:
        """The diagnostics of severity ``"error"``."""
        return [d for d in self.diagnostics if d.severity == "error"]


class InternalError(RuntimeError):
    """A bug in resnetc (a Rust panic or a failed consistency check), caught before it reached Python.

    Please report it with the message and what was loaded.
    """
