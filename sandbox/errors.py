"""One root error class and a few subclasses, each with an HTTP status and a stable code.

Views translate these at the edge into ``{"error": {"code", "message"}}``; the CLI prints
the message and exits non-zero. Nothing else should reach a user.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error the sandbox raises on purpose."""

    status: int = 400
    code: str = "error"

    def __init__(self, message: str, code: str | None = None, detail: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.detail:
            error["detail"] = self.detail
        return {"error": error}


class BadRequest(SandboxError):
    """The request itself is malformed: bad JSON, bad epsilon, refused SQL (400)."""

    status = 400
    code = "bad_request"


class Unauthorized(SandboxError):
    """No token, or a token nobody knows (401)."""

    status = 401
    code = "unauthorized"


class Forbidden(SandboxError):
    """Known caller, but outside what a grant or role allows (403)."""

    status = 403
    code = "forbidden"


class NotFound(SandboxError):
    status = 404
    code = "not_found"


class Conflict(SandboxError):
    """The state does not allow it: budget exhausted, illegal review transition (409)."""

    status = 409
    code = "conflict"


class PolicyError(SandboxError):
    """A policy file is invalid; the message names the file, the field and the problem."""

    status = 400
    code = "invalid_policy"
