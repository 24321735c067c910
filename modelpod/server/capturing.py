"""Payload capture for `--capture`: the recorder built from the settings, each model's `redact`
hook found in the repository, its counts added to the server's metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from modelpod.errors import NotFound
from modelpod.observe.capture import Capture, Redact, parse_capture
from modelpod.observe.capture_files import CaptureFiles
from modelpod.observe.capture_metrics import CaptureMetrics
from modelpod.server.settings import Settings
from modelpod.serving.repository import Repository


def start_capture(settings: Settings, repository: Repository) -> Capture | None:
    """The capture the settings ask for; None when they ask for none."""
    if not settings.capture:
        return None
    directory = settings.capture_path or settings.data_path / "capture"
    files = CaptureFiles(directory, settings.capture_file_size, settings.capture_files)
    drop = [field.strip() for field in (settings.capture_drop or "").split(",") if field.strip()]

    def redactor(model: str) -> Redact | None:
        """The model's own `redact(inputs, outputs)`, if its class has one."""
        try:
            hook = getattr(repository.get(model).probe, "redact", None)
        except NotFound:
            return None
        return hook if callable(hook) else None

    return Capture(
        parse_capture(settings.capture),
        files,
        queue_size=settings.capture_queue_size,
        max_value_bytes=settings.capture_max_value_size,
        drop_fields=drop,
        redactor=redactor,
    )


def count_in(registry: CollectorRegistry, capture: Capture) -> None:
    registry.register(CaptureMetrics(capture.counts))
