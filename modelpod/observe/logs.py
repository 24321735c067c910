"""Server logs: readable text, or one JSON object per line (`MODELPOD_LOG_FORMAT=json`), each line
about a request carrying its request id (and its trace id, when tracing is on).

The id comes from the client (`X-Request-Id` header, `x-request-id` gRPC metadata) or is made up,
is returned to the client, and follows the request onto the threads that run its model.
"""

from __future__ import annotations

import contextvars
import logging
import random
import sys
import time

import orjson

from modelpod.observe.events import request_trace

REQUEST_ID_HEADER = "x-request-id"
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelpod_request_id", default=None)


def trace_id_of(span: object) -> str:
    """The trace id of a request's span (`request_trace`) as 32 hex digits, as logs and captures
    name it; empty when tracing is off. Written when a line needs it, not for every request."""
    trace = getattr(span, "trace_id", 0)
    return f"{trace:032x}" if trace else ""


def new_request_id(given: str | None = None) -> str:
    """The client's id when it gave a sensible one, else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    # 64 random bits, as 16 hex digits: an id to find a request by, not a secret. Python's own
    # generator, reseeded in each forked process, costs no system call (uuid4 asks the kernel).
    return f"{random.getrandbits(64):016x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        tid = trace_id_of(request_trace.get())
        record.request_id = rid
        record.trace_id = tid
        record.request_tag = (f" [request {rid}" + (f" trace {tid}" if tid else "") + "]") if rid else ""
        return True


_TEXT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        tid = getattr(record, "trace_id", "")
        if tid:
            entry["trace_id"] = tid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, fmt: str = "text") -> None:
    """Send every log line to stderr in `fmt` ("text" or "json"), with request ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # one format for every line the server writes
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
