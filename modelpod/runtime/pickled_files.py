"""Model files loaded by unpickling them (scikit-learn's joblib and pickle files, MLflow models):
unpickling runs whatever code the file names, so such a file is refused unless the operator says
it is trusted (`--allow-pickle`, `allow_pickle=True`), before anything is unpickled.

A Store's version gets no `allow_pickle=`: the server instantiates its class by name. The store
that lays the version out for a server that allows pickles (`Store(allow_pickle=True)`) says so in
the version's laid-out config (`TRUSTED`), which it strips from any record (see
registry/file_artifacts.py), so that the trust comes from the serving side, never from a record."""

from __future__ import annotations

import os
from typing import Any

from modelpod.errors import ModelLoadError
from modelpod.runtime.file_model import FileModel
from modelpod.runtime.model import DEFAULT_VERSION

TRUSTED = "pickle_trusted"  # a laid-out config's key: the serving store allows pickles


class PickledFileModel(FileModel):
    """A `FileModel` whose loading unpickles: `refuse_unless_trusted` before it does."""

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        *,
        path: str | os.PathLike[str] | None = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> None:
        self.allow_pickle = allow_pickle
        super().__init__(version, path=path, **kwargs)

    def refuse_unless_trusted(self, what: str) -> None:
        """ModelLoadError unless pickles are allowed; `what` says what loading would unpickle."""
        if not (self.allow_pickle or self.config.get(TRUSTED) is True):
            raise ModelLoadError(
                f"{what}, which runs code from it: pass --allow-pickle (allow_pickle=True) if you trust it"
            )
