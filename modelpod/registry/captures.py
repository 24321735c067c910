"""Captured requests in a Store's database (SQLite or PostgreSQL) instead of files:
`modelpod serve --capture ... --capture-store URL`. One row per request, its record as the JSON line
a capture file would hold; written in batches by the capture's writer thread."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import create_engine, insert, select

from modelpod.registry.schema import captures

BATCH = 200  # rows per insert: a writer round's records, in statements of a bounded size


class CaptureTable:
    """A capture sink (`observe.capture.Sink`) writing rows to `modelpod_captures`."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url)
        captures.create(self._engine, checkfirst=True)
        self._pending: list[dict[str, Any]] = []

    def write(self, entries: Sequence[tuple[Mapping[str, Any], bytes]]) -> None:
        for record, line in entries:
            request_id = record.get("request_id")
            row = {
                "model": record["model"],
                "request_id": request_id and str(request_id)[:128],
                "time": record["time"],
                "record": line.decode(),
            }
            self._pending.append(row)

    def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []  # failed, they are lost (and logged): memory stays bounded
        with self._engine.begin() as connection:
            for start in range(0, len(rows), BATCH):
                connection.execute(insert(captures), rows[start : start + BATCH])

    def close(self) -> None:
        self.flush()
        self._engine.dispose()


def models(url: str) -> list[str]:
    """The models with captured requests in the database at `url`."""
    engine = create_engine(url)
    try:
        captures.create(engine, checkfirst=True)
        with engine.connect() as connection:
            return sorted(connection.scalars(select(captures.c.model).distinct()))
    finally:
        engine.dispose()


def records(url: str, model: str, since: float | None = None) -> Iterator[dict[str, Any]]:
    """A model's captured records, oldest first (from `since`, a Unix time, if given)."""
    engine = create_engine(url)
    try:
        captures.create(engine, checkfirst=True)
        query = select(captures.c.record).where(captures.c.model == model).order_by(captures.c.id)
        if since is not None:
            query = query.where(captures.c.time >= since)
        with engine.connect() as connection:
            rows = list(connection.scalars(query))
    finally:
        engine.dispose()
    for row in rows:
        yield json.loads(row)
