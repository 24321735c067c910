"""Payload capture for `--capture`: the recorder built from the settings, each model's `redact`
hook found in the repository, its counts added to the server's metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from modelpod.errors import NotFound
from modelpod.extras import needs_extra
from modelpod.observe.capture import Capture, Redact, Sink, parse_capture
from modelpod.observe.capture_files import CAPTURE_FOLDER, CaptureFiles
from modelpod.observe.capture_metrics import CaptureMetrics
from modelpod.server.settings import Settings
from modelpod.serving.repository import Repository


def start_capture(settings: Settings, repository: Repository) -> Capture | None:
    """The capture the settings ask for; None when they ask for none."""
    if not settings.capture:
        return None
    sink = _sink(settings)
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
        sink,
        queue_size=settings.capture_queue_size,
        max_value_bytes=settings.capture_max_value_size,
        drop_fields=drop,
        redactor=redactor,
    )


def _sink(settings: Settings) -> Sink:
    """JSON lines files under the data path, or a store's database (`--capture-store`)."""
    if settings.capture_store:
        with needs_extra("store", "--capture-store"):  # SQLAlchemy: imported only when used
            from modelpod.registry.captures import CaptureTable

        return CaptureTable(settings.capture_store)
    directory = settings.capture_path or settings.data_path / CAPTURE_FOLDER
    return CaptureFiles(directory, settings.capture_file_size, settings.capture_files)


def count_in(registry: CollectorRegistry, capture: Capture) -> None:
    registry.register(CaptureMetrics(capture.counts))
