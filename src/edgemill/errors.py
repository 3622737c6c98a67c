"""One error tree for the whole project.

Every error a user can cause is an :class:`EdgemillError` that carries what was wrong (the value),
what was expected, and how to fix it. :data:`STATUS_TABLE` maps each kind of error to the exit code of
the CLI, the HTTP status of the server and the gRPC status code of the agent, so the three front
doors agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class EdgemillError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    def __init__(
        self,
        problem: str,
        *,
        value: Any = None,
        expected: str | None = None,
        fix: str | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        self.field = field  # the request field or config key at fault, when there is one
        self.value = value
        self.expected = expected
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.problem]
        if self.value is not None:
            parts[0] += f": {_show(self.value)}"
        if self.expected:
            parts.append(f"expected {self.expected}")
        text = "; ".join(parts)
        if self.fix:
            text += f". Fix: {self.fix}"
        return text

    def to_dict(self) -> dict[str, Any]:
        status = status_for(self)
        return {
            "error": type(self).__name__,
            "message": self.one_line(),
            "problem": self.problem,
            "value": _show(self.value) if self.value is not None else None,
            "expected": self.expected,
            "fix": self.fix,
            "field": self.field,
            "exit_code": status.exit_code,
        }


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value != "" else "''"
    return str(value)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text: what a one-line error can quote of a library."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


# --- user errors (exit 1) -------------------------------------------------------------------


class UserError(EdgemillError):
    """Bad input from the user: a file, an option, a tensor."""


class FileNotFound(UserError):
    """A path the user named does not exist."""


class ModelFormatError(UserError):
    """A file that is not a model of the expected kind, or cannot be parsed."""


class ModelCheckError(UserError):
    """A model that parses but is invalid (checker, shape inference)."""


class UnknownTargetError(UserError):
    """A target name not in the catalog."""


class OptionError(UserError):
    """A compile/run option with a bad value."""


class LabelError(UserError):
    """A label that cannot judge its capture's answer (wrong kind, out of range, wrong count)."""


class InputMismatchError(UserError):
    """Tensors given to a model do not match its inputs (name, dtype, shape)."""


class AccuracyCheckError(UserError):
    """The compiled model does not reproduce the original within tolerance."""


class KeyFileError(UserError):
    """A signing or public key that cannot be read or has the wrong type."""


class MissingDependencyError(UserError):
    """An optional framework or library is not installed; the fix names the extra."""


class BackendError(UserError):
    """A backend library refused or failed to run a model."""


class ConfigError(UserError):
    """A configuration file with a bad key or value; the message names the key and its line."""


class ModelNotFoundError(UserError):
    """A request named a model that is not loaded."""


class ModelAlreadyLoadedError(UserError):
    """A load named a model that is already loaded under that name."""


class ResourceExhaustedError(UserError):
    """A memory budget, a queue or another bounded resource is full."""


class SharedMemoryError(UserError):
    """A shared-memory handle that does not exist, is too small, or cannot be mapped."""


class NotFoundError(UserError):
    """A request named a record (model, version, fleet, device, deployment...) that does not exist."""


class ConflictError(UserError):
    """A request conflicts with what exists (a name taken, a version already uploaded differently)."""


class StaleRequestError(ConflictError):
    """A heartbeat whose sequence number is not newer than the last one accepted (stale or replayed)."""

    def __init__(self, problem: str, *, last_seq: int, **kwargs: Any) -> None:
        self.last_seq = last_seq
        super().__init__(problem, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "last_seq": self.last_seq}


class AuthenticationError(UserError):
    """No credential, or one the server does not know (operator API key, device credential, token)."""


class PermissionDeniedError(UserError):
    """A known caller asked for something outside its reach (a device touching another's records)."""


class PayloadTooLargeError(UserError):
    """An upload over its configured size limit."""


class RateLimitedError(ResourceExhaustedError):
    """Too many requests of a kind at once; retry after ``retry_after_s``."""

    def __init__(self, problem: str, *, retry_after_s: float, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(problem, **kwargs)


class UsageError(EdgemillError):
    """The command line itself is malformed (exit 2)."""


# --- verification refusals (exit 3) ---------------------------------------------------------


class RefusalReason(str, enum.Enum):
    """Why a package was refused. Every refusal names exactly one of these."""

    CORRUPT_PACKAGE = "corrupt_package"
    MALFORMED_MANIFEST = "malformed_manifest"
    UNSUPPORTED_FORMAT = "unsupported_format"
    NOT_SIGNED = "not_signed"
    MALFORMED_SIGNATURE = "malformed_signature"
    UNTRUSTED_KEY = "untrusted_key"
    BAD_SIGNATURE = "bad_signature"
    MANIFEST_MODIFIED = "manifest_modified"
    FILE_MODIFIED = "file_modified"
    FILE_ADDED = "file_added"
    FILE_REMOVED = "file_removed"
    VERSION_ROLLBACK = "version_rollback"


class VerificationError(EdgemillError):
    """A package refused before any byte of it was loaded."""

    def __init__(self, reason: RefusalReason, problem: str, **kwargs: Any) -> None:
        self.reason = reason
        super().__init__(problem, **kwargs)

    def one_line(self) -> str:
        return f"package refused ({self.reason.value}): {super().one_line()}"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reason": self.reason.value}


# --- one table: error kind -> exit code, HTTP status, gRPC code -----------------------------


@dataclass(frozen=True)
class Status:
    exit_code: int
    http_status: int
    grpc_code: str  # name of grpc.StatusCode, kept as text so this module imports nothing


STATUS_TABLE: dict[type[EdgemillError], Status] = {
    EdgemillError: Status(1, 400, "INVALID_ARGUMENT"),
    UserError: Status(1, 400, "INVALID_ARGUMENT"),
    FileNotFound: Status(1, 404, "NOT_FOUND"),
    ModelFormatError: Status(1, 422, "INVALID_ARGUMENT"),
    ModelCheckError: Status(1, 422, "INVALID_ARGUMENT"),
    UnknownTargetError: Status(1, 400, "INVALID_ARGUMENT"),
    OptionError: Status(1, 400, "INVALID_ARGUMENT"),
    InputMismatchError: Status(1, 400, "INVALID_ARGUMENT"),
    LabelError: Status(1, 422, "INVALID_ARGUMENT"),
    AccuracyCheckError: Status(1, 422, "FAILED_PRECONDITION"),
    KeyFileError: Status(1, 400, "INVALID_ARGUMENT"),
    MissingDependencyError: Status(1, 501, "UNIMPLEMENTED"),
    BackendError: Status(1, 500, "INTERNAL"),
    ConfigError: Status(1, 400, "INVALID_ARGUMENT"),
    ModelNotFoundError: Status(1, 404, "NOT_FOUND"),
    ModelAlreadyLoadedError: Status(1, 409, "ALREADY_EXISTS"),
    ResourceExhaustedError: Status(1, 429, "RESOURCE_EXHAUSTED"),
    SharedMemoryError: Status(1, 400, "INVALID_ARGUMENT"),
    NotFoundError: Status(1, 404, "NOT_FOUND"),
    ConflictError: Status(1, 409, "ALREADY_EXISTS"),
    StaleRequestError: Status(1, 409, "FAILED_PRECONDITION"),
    AuthenticationError: Status(1, 401, "UNAUTHENTICATED"),
    PermissionDeniedError: Status(1, 403, "PERMISSION_DENIED"),
    PayloadTooLargeError: Status(1, 413, "RESOURCE_EXHAUSTED"),
    RateLimitedError: Status(1, 429, "RESOURCE_EXHAUSTED"),
    UsageError: Status(2, 400, "INVALID_ARGUMENT"),
    VerificationError: Status(3, 422, "PERMISSION_DENIED"),
}


def status_for(error: EdgemillError) -> Status:
    """The status of the most specific class of ``error`` listed in the table."""
    for cls in type(error).__mro__:
        if cls in STATUS_TABLE:
            return STATUS_TABLE[cls]  # type: ignore[index]
    return STATUS_TABLE[EdgemillError]
