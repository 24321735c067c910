"""The Store: records by identifier, version and uuid, artifacts, references, and a PostgreSQL backend."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelpod import Conflict, InvalidInput, Model, ModelLoadError, NotFound
from modelpod.registry.remote import RemoteModel
from modelpod.registry.store import Store

from servable import Echo

POSTGRES_URL = os.environ.get("MODELPOD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_or_skip(tmp_path: Path) -> Store:
    try:
        store = Store(POSTGRES_URL, data_path=tmp_path)
    except Exception as error:  # no driver, no server: the default SQLite store needs neither
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} ({type(error).__name__}: {error})")
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = Store(data_path=tmp_path) if request.param == "sqlite" else postgres_or_skip(tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def name() -> str:
    """A fresh identifier, so that tests sharing one PostgreSQL database never meet."""
    return f"echo-{uuid.uuid4().hex[:8]}"


def trained(tmp_path: Path, name: str, version: str = "1", **config: Any) -> Echo:
    model = Echo(version, name=name, data_path=tmp_path / "work", **config)
    model.train(steps=2)
    return model


def test_apply_records_identifier_version_uuid_config_and_artifacts(
    store: Store, tmp_path: Path, name: str
) -> None:
    record = store.apply(trained(tmp_path, name, colour="red"))
    assert (record.identifier, record.version) == (name, "1")
    assert uuid.UUID(record.uuid)
    assert record.class_ref == "servable:Echo"
    assert record.config == {"colour": "red"}
    assert record.has_artifacts
    assert not record.pickled
    assert (store.artifact_path / name / "1" / "weights.txt").read_text() == "trained 2"
    assert record.reference == f"modelpod://{name}/1/{record.uuid}"


def test_applying_the_same_model_twice_makes_no_new_version(store: Store, tmp_path: Path, name: str) -> None:
    model = trained(tmp_path, name)
    assert store.apply(model) == store.apply(model)
    assert [r.version for r in store.show(name)] == ["1"]


def test_a_changed_config_or_artifact_is_a_new_version(store: Store, tmp_path: Path, name: str) -> None:
    store.apply(trained(tmp_path, name))
    assert store.apply(trained(tmp_path, name, "2", colour="blue")).version == "2"
    retrained = trained(tmp_path, name, "2", colour="blue")
    retrained.train(steps=5)
    assert store.apply(retrained).version == "3"
    assert [r.version for r in store.show(name)] == ["1", "2", "3"]


def test_explicit_versions_and_conflicts(store: Store, tmp_path: Path, name: str) -> None:
    assert store.apply(trained(tmp_path, name), version="prod").version == "prod"
    with pytest.raises(Conflict, match="version prod is already in the store"):
        store.apply(trained(tmp_path, name, colour="new"), version="prod")
    with pytest.raises(InvalidInput, match="invalid version"):
        store.apply(trained(tmp_path, name), version="../escape")
    assert (store.artifact_path / name / "prod" / "weights.txt").exists()


def test_finding_records(store: Store, tmp_path: Path, name: str) -> None:
    first = store.apply(trained(tmp_path, name))
    second = store.apply(trained(tmp_path, name, "2", n=2))
    assert store.record(name) == second
    assert store.record(name, "1") == first
    assert store.record(name, uuid=first.uuid) == first
    assert {r.identifier for r in store.list()} >= {name}
    with pytest.raises(NotFound, match=r"has no .* version 7 \(versions: 1, 2\)"):
        store.record(name, "7")
    with pytest.raises(NotFound, match="versions: none"):
        store.record(f"{name}-missing")


def test_remove_a_version_or_a_model(store: Store, tmp_path: Path, name: str) -> None:
    store.apply(trained(tmp_path, name))
    store.apply(trained(tmp_path, name, "2", n=2))
    assert store.remove(name, "1") == 1
    assert [r.version for r in store.show(name)] == ["2"]
    assert not (store.artifact_path / name / "1").exists()
    assert store.remove(name) == 1
    assert store.show(name) == []
    with pytest.raises(NotFound):
        store.remove(name)


def test_materialize_lays_out_a_servable_version(store: Store, tmp_path: Path, name: str) -> None:
    record = store.apply(trained(tmp_path, name, colour="green"))
    target = store.materialize(record, tmp_path / "serving")
    assert (target / "weights.txt").read_text() == "trained 2"
    found = Echo("1", name=name, data_path=tmp_path / "serving")
    assert found.config == {"colour": "green"}
    assert [entry["step"] for entry in found.log()] == [1, 2]


def test_tampered_artifacts_are_refused(store: Store, tmp_path: Path, name: str) -> None:
    record = store.apply(trained(tmp_path, name))
    (store.artifact_path / name / "1" / "weights.txt").write_text("something else")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        store.materialize(record, tmp_path / "serving")


def test_a_class_that_cannot_be_imported_is_pickled_and_needs_consent(tmp_path: Path, name: str) -> None:
    class Local(Model):  # defined in a function: no import path leads to it
        def predict(self, x: int) -> int:
            return x + 1

    store = Store(data_path=tmp_path)
    record = store.apply(Local(name=name, data_path=tmp_path / "work"))
    assert record.pickled
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        store.model_class(record)
    trusting = Store(data_path=tmp_path, allow_pickle=True)
    assert trusting.load(name).predict(x=1) == 2


def test_load_gives_a_proxy_that_runs_locally_when_nothing_serves_it(
    store: Store, tmp_path: Path, name: str
) -> None:
    record = store.apply(trained(tmp_path, name, colour="red"))
    proxy = store.load(name)
    assert isinstance(proxy, RemoteModel)
    assert proxy.route is None  # nothing loaded before first use
    answer = proxy.predict(text="hi")
    assert answer == {"text": "hi", "version": "1", "config": {"colour": "red"}}
    assert proxy.route == "local"
    assert proxy.uuid == record.uuid
    assert (store.data_path / name / "1" / "weights.txt").exists()


def test_references_round_trip(store: Store, tmp_path: Path, name: str) -> None:
    record = store.apply(trained(tmp_path, name))
    proxy = store.load(name)
    assert proxy.encode() == record.reference
    assert RemoteModel.decode(record.reference, store).uuid == record.uuid
    with pytest.raises(InvalidInput, match="needs the store"):
        RemoteModel.decode(record.reference)
    with pytest.raises(InvalidInput, match="not a modelpod reference"):
        store.load_reference("http://elsewhere")


def test_endpoints_expire_without_heartbeats(tmp_path: Path, name: str) -> None:
    store = Store(data_path=tmp_path, heartbeat_timeout=0.2)
    store.register_endpoint("server-a", name, "1", "grpc", "127.0.0.1:1")
    assert [e.address for e in store.endpoints(name, "1")] == ["127.0.0.1:1"]
    store.heartbeat("server-a")
    assert store.endpoints(name, "2") == []
    time.sleep(0.3)
    assert store.endpoints(name, "1") == []
    store.register_endpoint("server-b", name, "1", "http", "http://127.0.0.1:2")
    store.deregister("server-b")
    assert store.endpoints(name, "1") == []
