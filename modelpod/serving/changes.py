"""Where the changes a server makes to what it serves go: a default version switched, a model loaded
or unloaded, a version initialized or trained. A lone server keeps them to itself (`Changes`); the
Ray backend shares them with its other replicas (`modelpod.ray`), through this one seam.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT, LOAD, UNLOAD, CHANGED, TRAFFIC = "default", "load", "unload", "changed", "traffic"
"""The kinds of change: CHANGED means a version's files changed (initialized, or trained); TRAFFIC
a model's traffic policy was replaced (its value: the policy's document as JSON)."""


class Changes:
    """Makes each change here; a subclass may also tell others of it."""

    async def make(self, kind: str, name: str, value: str, change: Callable[[], Awaitable[T]]) -> T:
        """Make `change`, of `kind` to model `name` (`value`: the version it concerns, if any)."""
        return await change()

    def trained(self, name: str, version: str) -> None:
        """A training job succeeded (called on the job's thread, after its request was answered)."""
        return
