"""One error hierarchy; the CLI maps it to exit codes in one place (cli.py)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit-code contract. Documented in README.md; never renumber."""

    READY = 0
    NOT_READY = 1
    USAGE = 2
    FETCH = 3
    AUTH = 4
    DISK_SPACE = 5
    LEASE = 6
    INTERRUPTED = 130


class PreflightError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code: ExitCode = ExitCode.NOT_READY

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(PreflightError):
    """Bad command line or option combination."""

    exit_code = ExitCode.USAGE


class ManifestError(UsageError):
    """The manifest (or lock file) cannot be used. Carries file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.reason = message

    def to_list(self) -> list[dict]:
        """The error(s) as the JSON report lists them: one object each, located."""
        return [{"file": self.file, "line": self.line, "column": self.column, "field": self.field, "message": self.reason,
                 "hint": self.hint}]


class ManifestErrors(ManifestError):
    """Several manifest errors found in one pass. It reads as the first one (same file,
    line, field and start of str()), then lists the others, one per line."""

    SHOWN = 20

    def __init__(self, errors: list[ManifestError]) -> None:
        first, rest = errors[0], errors[1:]
        super().__init__(first.reason, file=first.file, line=first.line, field=first.field, column=first.column)
        self.errors = list(errors)
        lines = [self.message] + ([f"  hint: {first.hint}"] if first.hint else [])
        lines.append(f"{len(rest)} more error{'s' if len(rest) > 1 else ''} in this manifest:")
        lines += [f"  {e}" + (f" (hint: {e.hint})" if e.hint else "") for e in rest[: self.SHOWN]]
        if len(rest) > self.SHOWN:
            lines.append(f"  … and {len(rest) - self.SHOWN} more")
        self.message = "\n".join(lines)

    def to_list(self) -> list[dict]:
        return [d for e in self.errors for d in e.to_list()]


class FetchError(PreflightError):
    """Network, HTTP, not found, timeout: the source could not deliver."""

    exit_code = ExitCode.FETCH

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status
        self.retry_after: float | None = None  # seconds, from the server's Retry-After
        self.permanent = False  # asking again gives the same answer (a local file unreadable to this uid): never retried


class StalledError(FetchError):
    """No byte arrived within the stall timeout."""


class IntegrityError(FetchError):
    """Fetched bytes do not match what was expected (size, digest, format)."""


class UnsafeContentError(IntegrityError):
    """The bytes are the ones asked for and must still not be published (a pickle that
    imports dangerous callables). Fetching again cannot help; the lane is not ready."""

    exit_code = ExitCode.NOT_READY
    problem_code = "dangerous-pickle"


class UnsafeSourceError(IntegrityError):
    """A source listed a name (or id) that would put a file outside its lane. Nothing is
    fetched for the lane; asking again cannot help."""

    exit_code = ExitCode.NOT_READY
    problem_code = "path-escape"


class ArchiveBombError(UnsafeSourceError):
    """An archive that would expand past a bound (members, total bytes, expansion ratio).
    The same bytes give the same answer: not retried; the lane is not ready."""

    problem_code = "archive-bomb"


class ArchiveInvalidError(IntegrityError):
    """An archive its reader cannot read (truncated, not the format its name says). Bytes
    that fail verification: exit 3, like a digest that does not match."""

    problem_code = "archive-invalid"


class AuthError(FetchError):
    """401/403, or a gated/private repo without a token."""

    exit_code = ExitCode.AUTH


class DiskSpaceError(PreflightError):
    exit_code = ExitCode.DISK_SPACE
    HINT = "free space on the volume, or select fewer lanes (--profile / --lane)"

    def __init__(self, message: str) -> None:
        super().__init__(message, hint=self.HINT)


class LeaseError(PreflightError):
    """Another writer holds the volume past the wait limit."""

    exit_code = ExitCode.LEASE


class NotReadyError(PreflightError):
    exit_code = ExitCode.NOT_READY


IMAGE_EXTRAS = ("s3", "signing")  # what the Dockerfile's EXTRAS build argument installs by default


class MissingExtra(UsageError):
    """An optional dependency a lane or command needs is not installed: the message names
    the extra that brings it (one wording for every extra)."""

    def __init__(self, what: str, extra: str, module: str | None, *, alternative: str | None = None) -> None:
        fix = f"pip install 'lane-preflight[{extra}]'"
        missing = f" ({module} is not installed)" if module else ""
        image = ("the lane-preflight image carries it" if extra in IMAGE_EXTRAS
                 else f"the image carries {' and '.join(IMAGE_EXTRAS)} only: build it with --build-arg EXTRAS=\"{' '.join(IMAGE_EXTRAS)} {extra}\"")
        super().__init__(f"{what} needs the {extra} extra{missing}: {fix}",
                         hint=fix + (f", or {alternative}" if alternative else "") + f" ({image})")
        self.extra = extra


class FitRefusedError(NotReadyError):
    """A lane the engine would refuse on this node, found before its bytes were downloaded.
    Carries the fit's findings and figures for the lane's report."""

    def __init__(self, message: str, problems: list, fit: dict | None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems
        self.fit = fit
        self.problem_code = next((p.code for p in problems if p.is_error), "fit-unknown")
