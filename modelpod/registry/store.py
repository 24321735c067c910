"""The registry: models recorded by identifier, version and uuid, their artifacts, and where they are served.

    store = Store()                      # SQLite under the data path; or Store("postgresql+psycopg://...")
    record = store.apply(model)          # identifier = the model's name; version 1, 2, ... unless given
    proxy = store.load("iris")           # a RemoteModel: remote while a server serves it, local otherwise

A record keeps the class as an importable reference (`module:Class`). A class that cannot be
imported (defined in `__main__`, say) is kept pickled with cloudpickle, and loading it runs code
from the store: that needs `allow_pickle=True`, for stores you trust.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, create_engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from modelpod.errors import Conflict, InvalidInput, ModelLoadError, NotFound
from modelpod.registry import artifacts, file_artifacts
from modelpod.registry.endpoint_records import EndpointRecords
from modelpod.registry.schema import metadata, models, settings
from modelpod.runtime.adapters import as_model
from modelpod.runtime.model import Model, check_name, class_path, default_data_path
from modelpod.runtime.objects import load_object

if TYPE_CHECKING:
    from modelpod.registry.remote import RemoteModel

logger = logging.getLogger("modelpod.registry.store")

REFERENCE_PREFIX = "modelpod://"


@dataclass(frozen=True)
class ModelRecord:
    """One applied version of a model."""

    identifier: str
    version: str
    uuid: str
    class_ref: str
    config: dict[str, Any]
    checksum: str
    has_artifacts: bool
    pickled: bool
    created_at: float
    updated_at: float

    @property
    def reference(self) -> str:
        """The string `encode()` gives for an applied model, and `Store.load_reference` reads."""
        return f"{REFERENCE_PREFIX}{self.identifier}/{self.version}/{self.uuid}"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class Store(EndpointRecords):
    """Models by identifier, version and uuid, in any SQLAlchemy database; artifacts on disk; and the
    endpoints that serve them (`EndpointRecords`)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        data_path: str | Path | None = None,
        artifact_path: str | Path | None = None,
        heartbeat_timeout: float = 15.0,
        allow_pickle: bool = False,
    ) -> None:
        self.data_path = Path(data_path) if data_path is not None else default_data_path()
        registry = self.data_path / "registry"
        if url is None:
            registry.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{registry / 'registry.db'}"
        self.url = url
        self.heartbeat_timeout = heartbeat_timeout
        self.allow_pickle = allow_pickle
        self._engine = create_engine(url)
        metadata.create_all(self._engine)
        recorded = self._artifact_area(registry / "artifacts")
        self.artifact_path = Path(artifact_path) if artifact_path is not None else recorded

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._engine.begin() as connection:
            yield connection

    def _artifact_area(self, proposed: Path) -> Path:
        """Where artifacts live: fixed by whoever created the store, so every process finds them.

        Several machines sharing one database need that folder on shared storage (or pass
        `artifact_path=` where it is mounted elsewhere).
        """
        query = select(settings.c.value).where(settings.c.key == "artifact_path")
        with self._transaction() as connection:
            found = connection.execute(query).scalar_one_or_none()
            if found is not None:
                return Path(found)
            try:
                connection.execute(
                    insert(settings).values(key="artifact_path", value=str(proposed.resolve()))
                )
            except IntegrityError:  # another process created the store at the same moment
                connection.rollback()
                return Path(connection.execute(query).scalar_one())
        return proposed.resolve()

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    # -- recording models -------------------------------------------------------------------------

    def apply(self, model: Any, version: str | None = None, identifier: str | None = None) -> ModelRecord:
        """Record a model (a Model instance, class, predictor, function, RemoteModel, or a model
        file's path: see file_artifacts.py) and its artifacts, under `identifier` (default: its name).

        Applying what the latest version already holds returns that version instead of a new one.
        """
        from modelpod.registry.remote import RemoteModel

        if isinstance(model, RemoteModel):
            return model.apply_to(self)
        instance = as_model(model, **file_artifacts.model_options(model, self.allow_pickle))
        identifier = check_name("identifier", identifier or instance.model_name)
        class_ref, pickled = self._class_reference(instance)
        model_dir = instance.data_path / instance.model_name / instance.version
        with file_artifacts.staged(instance, model_dir, _json_config(instance.config)) as (model_dir, config):
            digest = artifacts.checksum(model_dir)
            latest = self._latest(identifier)
            if version is None and latest is not None and _same(latest, class_ref, config, digest):
                return latest
            return self._insert(identifier, version, class_ref, pickled, config, digest, model_dir)

    def _class_reference(self, instance: Model) -> tuple[str, bytes | None]:
        source = instance.source()
        reference = class_path(source)
        try:
            importable = load_object(reference) is source
        except Exception:
            importable = False
        if importable:
            return reference, None
        import cloudpickle  # only for classes that cannot be found again by name

        logger.warning("%s cannot be imported by name; recording it pickled", reference)
        return reference, bytes(cloudpickle.dumps(source))

    def _insert(self, identifier: str, version: str | None, class_ref: str, pickled: bytes | None,
                config: dict[str, Any], digest: str, model_dir: Path) -> ModelRecord:  # fmt: skip
        now = time.time()
        has_artifacts = bool(artifacts.files(model_dir))
        fields = {"identifier": identifier, "class_ref": class_ref, "pickled_class": pickled,
                  "config": config, "checksum": digest, "has_artifacts": has_artifacts,
                  "created_at": now, "updated_at": now}  # fmt: skip
        for _attempt in range(5):  # a concurrent apply may take the next version number first
            chosen = check_name("version", version) if version is not None else self._next_version(identifier)
            row = {**fields, "uuid": str(uuid.uuid4()), "version": chosen}
            try:
                with self._transaction() as connection:  # the row claims the version first
                    connection.execute(insert(models).values(**row))
            except IntegrityError:
                if version is not None:
                    raise Conflict(f"{identifier} version {version} is already in the store") from None
                continue
            self._store_artifacts(row, model_dir)
            logger.info("applied %s version %s (%s)", identifier, chosen, row["uuid"])
            return _record(row)
        raise Conflict(f"could not choose a version for {identifier}: too many concurrent applies")

    def _store_artifacts(self, row: dict[str, Any], model_dir: Path) -> None:
        if not row["has_artifacts"]:
            return
        try:
            artifacts.copy(model_dir, self._artifacts_of(row["identifier"], row["version"]))
        except OSError:
            with self._transaction() as connection:
                connection.execute(delete(models).where(models.c.uuid == row["uuid"]))
            raise

    def _next_version(self, identifier: str) -> str:
        numbers = [int(r.version) for r in self.show(identifier) if r.version.isdigit()]
        return str(max(numbers, default=0) + 1)

    def _latest(self, identifier: str) -> ModelRecord | None:
        records = self.show(identifier)
        return records[-1] if records else None

    def _artifacts_of(self, identifier: str, version: str) -> Path:
        return self.artifact_path / identifier / version

    # -- reading ---------------------------------------------------------------------------------

    def list(self) -> builtins.list[ModelRecord]:
        """Every recorded version of every model."""
        with self._transaction() as connection:
            rows = connection.execute(select(models)).mappings().all()
        return sorted((_record(row) for row in rows), key=lambda r: (r.identifier, r.created_at))

    def show(self, identifier: str) -> builtins.list[ModelRecord]:
        """Every version of one model, oldest first; [] if there is none."""
        with self._transaction() as connection:
            rows = (
                connection.execute(select(models).where(models.c.identifier == identifier)).mappings().all()
            )
        return sorted((_record(row) for row in rows), key=lambda r: r.created_at)

    def record(self, identifier: str, version: str | None = None, uuid: str | None = None) -> ModelRecord:
        """One version (the latest when none is named); NotFound with what exists otherwise."""
        candidates = self.show(identifier)
        if uuid is not None:
            candidates = [r for r in candidates if r.uuid == uuid]
        if version is not None:
            candidates = [r for r in candidates if r.version == str(version)]
        if not candidates:
            known = ", ".join(r.version for r in self.show(identifier)) or "none"
            wanted = f"{identifier} version {version or 'any'}" + (f" uuid {uuid}" if uuid else "")
            raise NotFound(f"the store has no {wanted} (versions: {known})")
        return candidates[-1]

    def load(self, identifier: str, version: str | None = None, uuid: str | None = None) -> RemoteModel:
        """A proxy for a recorded model: remote while a server serves it, local otherwise."""
        from modelpod.registry.remote import RemoteModel

        return RemoteModel.from_record(self, self.record(identifier, version, uuid))

    def load_reference(self, reference: str) -> RemoteModel:
        """The proxy for a `modelpod://identifier/version/uuid` reference."""
        if not reference.startswith(REFERENCE_PREFIX):
            raise InvalidInput(
                f"{reference!r} is not a modelpod reference ({REFERENCE_PREFIX}identifier/version/uuid)"
            )
        parts = reference[len(REFERENCE_PREFIX) :].split("/")
        if len(parts) != 3:
            raise InvalidInput(f"{reference!r}: expected {REFERENCE_PREFIX}identifier/version/uuid")
        return self.load(*parts)

    def remove(self, identifier: str, version: str | None = None) -> int:
        """Forget one version, or every version of a model; returns how many were removed."""
        doomed = [r for r in self.show(identifier) if version is None or r.version == str(version)]
        if not doomed:
            raise NotFound(f"the store has no {identifier}" + (f" version {version}" if version else ""))
        with self._transaction() as connection:
            for record in doomed:
                connection.execute(delete(models).where(models.c.uuid == record.uuid))
        for record in doomed:
            artifacts.remove(self._artifacts_of(record.identifier, record.version))
        return len(doomed)

    # -- turning a record back into a model ---------------------------------------------------------

    def model_class(self, record: ModelRecord) -> Any:
        """The class (or function) a record runs: imported by name, or unpickled if allowed."""
        if not record.pickled:
            try:
                return load_object(record.class_ref)
            except (ValueError, ImportError) as error:
                raise ModelLoadError(
                    f"cannot import {record.class_ref} for {record.identifier}: {error}"
                ) from None
        if not self.allow_pickle:
            raise ModelLoadError(
                f"{record.identifier} version {record.version} holds a pickled class ({record.class_ref}); "
                "loading it runs code from the store: pass allow_pickle=True (--allow-pickle) if you trust it"
            )
        import cloudpickle

        with self._transaction() as connection:
            blob = connection.execute(
                select(models.c.pickled_class).where(models.c.uuid == record.uuid)
            ).scalar_one()
        return cloudpickle.loads(blob)

    def materialize(self, record: ModelRecord, data_path: str | Path) -> Path:
        """Lay a version out under `data_path` as a server expects it: model_info.json and its artifacts."""
        target = Path(data_path) / record.identifier / record.version
        if record.has_artifacts:
            source = self._artifacts_of(record.identifier, record.version)
            if not source.is_dir():
                raise ModelLoadError(
                    f"the artifacts of {record.identifier} version {record.version} are missing from "
                    f"{source}: is the store's artifact area reachable from here? (Store(artifact_path=...))"
                )
            if artifacts.checksum(source) != record.checksum:
                raise ModelLoadError(
                    f"the artifacts of {record.identifier} version {record.version} changed since they were "
                    "applied (checksum mismatch); refusing to load them"
                )
            if artifacts.checksum(target) != record.checksum:
                artifacts.copy(source, target)
        target.mkdir(parents=True, exist_ok=True)
        info = {
            "name": record.identifier,
            "version": record.version,
            "class": record.class_ref,
            "config": file_artifacts.laid_out_config(record.config, self.allow_pickle),
            "uuid": record.uuid,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }
        (target / "model_info.json").write_text(json.dumps(info, indent=2))
        return target

    # -- where models are served ----------------------------------------------------------------------


def _record(row: Any) -> ModelRecord:
    return ModelRecord(
        identifier=row["identifier"],
        version=row["version"],
        uuid=row["uuid"],
        class_ref=row["class_ref"],
        config=dict(row["config"]),
        checksum=row["checksum"],
        has_artifacts=bool(row["has_artifacts"]),
        pickled=row["pickled_class"] is not None if "pickled_class" in row else False,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _same(record: ModelRecord, class_ref: str, config: dict[str, Any], digest: str) -> bool:
    return record.class_ref == class_ref and record.config == config and record.checksum == digest


def _json_config(config: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(config)))
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"a recorded config must hold JSON values: {error}") from None
