"""The one error an artifact that cannot be used raises, whatever its scheme."""

from __future__ import annotations

from typing import Literal

ArtifactKind = Literal["model", "adapter"]


class ArtifactError(Exception):
    """An artifact could not be fetched or does not have the expected layout.

    Callers surface ``str(error)`` as a status message, so it names the URI and the cause
    in one sentence; ``uri`` and ``cause`` stay separate for callers that format their own.
    """

    def __init__(
        self, uri: str, cause: str, kind: ArtifactKind = "model", field: str | None = None
    ) -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{kind} {uri!r} is not usable: {cause}")
        self.uri = uri
        self.cause = cause
        self.kind = kind
        self.field = field

    def in_field(self, field: str) -> ArtifactError:
        """This error naming the spec field that holds the URI."""
        return ArtifactError(self.uri, self.cause, self.kind, field)
