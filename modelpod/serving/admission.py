"""The gate in front of the model threads: every call into model code is counted in flight (a
graceful drain waits for it), refused once the server drains, and bounded by its request's timeout."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from modelpod.errors import Timeout, Unavailable

T = TypeVar("T")


class Admission:
    """The model threads, and the count of calls and streams in flight on them."""

    def __init__(self, max_workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers, thread_name_prefix="modelpod-model")
        self._in_flight = 0
        self._lock = threading.Lock()
        self.draining = False

    async def run(self, function: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run blocking model code on the model threads, counted for a graceful drain."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the request id follows the work onto the thread

        def start() -> asyncio.Future[T]:
            # A direct hand-off, lighter than `loop.run_in_executor`, which checks the function's
            # kind and chains two futures through callbacks on every call.
            answer: asyncio.Future[T] = loop.create_future()
            work = self.executor.submit(_run_and_settle, loop, answer, context, function, args)
            answer.add_done_callback(lambda _: work.cancel())  # gave up: not run if not yet started
            return answer

        return await self.wait(start, timeout)

    async def wait(self, start: Callable[[], asyncio.Future[T]], timeout: float | None) -> T:
        """Wait for work started by `start`, counted in flight; past `timeout`, answer Timeout."""
        with self.counted(timeout):
            if timeout is None:
                return await start()
            return await asyncio.wait_for(start(), timeout)

    async def here(self, work: Callable[[], Awaitable[T]], timeout: float | None) -> T:
        """Await model code on the event loop itself (an `async def predict`), counted in flight
        like `run`, and bounded by the request's timeout (which cancels it)."""
        with self.counted(timeout):
            if timeout is None:  # most requests: no timer to arm and cancel
                return await work()
            async with asyncio.timeout(timeout):
                return await work()

    def counted(self, timeout: float | None) -> Counted:
        """In flight meanwhile (refused while draining); a TimeoutError inside is the request's Timeout."""
        return Counted(self, timeout)

    def count(self, change: int) -> None:
        """Calls in flight, up or down by `change`."""
        with self._lock:
            self._in_flight += change

    def enter(self) -> None:
        """A stream is in flight from its start until its model is closed (a drain waits for it)."""
        self.refuse_if_draining()
        self.count(1)

    def leave(self) -> None:
        self.count(-1)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica", retry_after=1.0)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    async def drain(self, timeout: float) -> bool:
        """Refuse new work, and wait for what is in flight; False if some still ran at `timeout`."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.in_flight == 0

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Counted:
    """`Admission.counted`: a class rather than a generator, which costs several times as much to
    enter and leave (every request passes one, on the event loop)."""

    __slots__ = ("admission", "timeout")

    def __init__(self, admission: Admission, timeout: float | None) -> None:
        self.admission = admission
        self.timeout = timeout

    def __enter__(self) -> None:
        self.admission.refuse_if_draining()
        if self.timeout is not None and self.timeout <= 0:
            raise Timeout("the request's deadline had passed when it arrived")
        self.admission.count(1)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        self.admission.count(-1)
        if kind is not None and issubclass(kind, TimeoutError):
            raise Timeout(f"no answer within the request's timeout of {self.timeout:g} s") from None


def _run_and_settle(
    loop: asyncio.AbstractEventLoop,
    answer: asyncio.Future[T],
    context: contextvars.Context,
    function: Callable[..., T],
    args: tuple[Any, ...],
) -> None:
    """(On a model thread) run the call, then settle its future on the event loop."""
    try:
        result = context.run(function, *args)
    except BaseException as error:  # whatever it raised is the caller's answer
        _settle_threadsafe(loop, answer, None, error)
    else:
        _settle_threadsafe(loop, answer, result, None)


def _settle_threadsafe(
    loop: asyncio.AbstractEventLoop, answer: asyncio.Future[T], result: T | None, error: BaseException | None
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, nobody waits
        loop.call_soon_threadsafe(_settle, answer, result, error)


def _settle(answer: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if answer.done():  # cancelled meanwhile: the caller timed out or left
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)  # type: ignore[arg-type]
