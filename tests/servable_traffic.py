"""Models the traffic tests serve beside tests/servable.py: each answer says which version made it."""

from __future__ import annotations

from collections.abc import Iterator

from modelpod import Model


class Versioned(Model):
    """A text generator (and native stream) whose every piece names its version."""

    name = "versioned"

    def predict(self, prompt: str, max_tokens: int = 2) -> Iterator[str]:
        for _ in range(max_tokens):
            yield f"v{self.version} "


class VersionedVectors(Model):
    """An embedding model whose vectors are its version number."""

    name = "vvectors"

    def predict(self, text: str) -> list[float]:
        return [float(self.version), float(len(text))]
