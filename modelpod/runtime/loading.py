"""A model's life in this process: its custom operators, its device, `setup`, a warm-up request, and
`teardown`. A `Runner` holds one; loading is idempotent and safe from any thread."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from modelpod.errors import ModelLoadError, ModelpodError
from modelpod.runtime.calls import describe_error
from modelpod.runtime.devices import load_custom_ops, select_device
from modelpod.runtime.inputs import InputPreparer
from modelpod.runtime.model import Model

logger = logging.getLogger("modelpod.runtime.runner")


class Loading:
    """Loads a model once (the first caller does the work, the others wait for it), and unloads it."""

    def __init__(
        self,
        model: Model,
        inputs: InputPreparer,
        requested_device: str | None,
        custom_ops: Sequence[str],
        warm_up: Callable[[dict[str, Any]], Any] | None,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.requested_device = requested_device
        self.custom_ops = tuple(custom_ops)
        self.warm_up = warm_up  # runs the model's `example` once loaded; None: no warm-up
        self.lock = threading.Lock()
        self.loaded = False

    def load(self) -> None:
        """Load custom operators, choose the device, run `setup`, then warm up."""
        if self.loaded:
            return
        with self.lock:
            if self.loaded:
                return
            load_custom_ops(self.custom_ops)
            try:
                self.model.device = select_device(self.requested_device)
            except ValueError as error:
                raise ModelLoadError(f"model {self._label} cannot be loaded: {error}") from error
            self.inputs.device = self.model.device
            try:
                self.model.setup()
            except Exception as error:
                raise ModelLoadError(
                    f"model {self._label} failed to load: {describe_error(error)}"
                ) from error
            self._warm_up()
            self.loaded = True
            logger.info("loaded %r on %s", self.model, self.model.device)

    def unload(self) -> None:
        """Tear the model down if it is loaded; the next `load` sets it up again."""
        with self.lock:
            if self.loaded:
                self.loaded = False
                self.model.teardown()
                logger.info("unloaded %r", self.model)

    def _warm_up(self) -> None:
        example = self.model.example
        if self.warm_up is None or example is None:
            return
        try:
            self.warm_up(dict(example))
        except ModelpodError as error:
            # not loaded, so unload() will not tear it down: free what setup took now
            with contextlib.suppress(Exception):
                self.model.teardown()
            raise ModelLoadError(f"model {self._label} failed its warm-up request: {error}") from error

    @property
    def _label(self) -> str:
        return f"{self.model.model_name}:{self.model.version}"
