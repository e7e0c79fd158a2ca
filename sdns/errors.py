"""Errors as values a user can act on; the API maps each to one HTTP status."""


class SdnsError(Exception):
    """Base of every error sdns reports to a user."""

    status = 500

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field

    def to_json(self) -> dict[str, str]:
        body = {"error": self.reason}
        if self.field is not None:
            body["field"] = self.field
        return body


class Invalid(SdnsError):
    """The request itself is wrong: a bad name, address, port or body."""

    status = 400


class TooLarge(SdnsError):
    status = 413


class UnsupportedMediaType(SdnsError):
    status = 415


class NotFound(SdnsError):
    status = 404


class Conflict(SdnsError):
    """The request is well formed but clashes with what is stored."""

    status = 409


class Gone(SdnsError):
    """A watch asked for history that is no longer kept: list again, then watch from there."""

    status = 410


class NotYetVisible(SdnsError):
    """The write is in the store, but this replica's view did not reach it in time: reads here
    may not show it yet. Not a failure, so a 2xx; but not the usual answer either."""

    status = 202

    def __init__(self, revision: int, waited: float) -> None:
        super().__init__(f"stored at revision {revision}, but this replica did not see it within "
                         f"{waited:g} s; its reads and DNS answers may not show it yet")
        self.revision = revision

    def to_json(self) -> dict[str, str | int | bool]:
        return {"stored": True, "visible": False, "revision": self.revision,
                "detail": self.reason}


class BackendUnavailable(SdnsError):
    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(f"backend unavailable: {detail}")


class Unauthorized(SdnsError):
    """No token, or one the API does not know."""

    status = 401


class Forbidden(SdnsError):
    """A known token whose scope or namespaces do not cover the call."""

    status = 403
