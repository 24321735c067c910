"""What a server hosts: names, versions on disk in natural order, and each model's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpod import InvalidInput, Model, NotFound
from modelpod.serving.repository import Repository


class Echo(Model):
    name = "echo"

    def predict(self, text: str) -> str:
        return text


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    repository = Repository(tmp_path)
    repository.add(Echo)
    repository.add(add)
    return repository


def make_version(repository: Repository, name: str, version: str) -> None:
    repository.instance(repository.get(name), version).initialize(made=version)


def test_add_and_names(repository: Repository) -> None:
    assert repository.names() == ["echo", "add"]  # in the order added
    hosted = repository.add(Echo, name="echo-2", default_version="7")
    assert (hosted.name, hosted.target, hosted.default_version) == ("echo-2", Echo, "7")
    assert repository.names() == ["echo", "add", "echo-2"]
    assert repository.get("echo-2") is hosted


def test_duplicate_names_are_refused(repository: Repository) -> None:
    with pytest.raises(ValueError, match="a model named 'echo' is already served; give one a name="):
        repository.add(Echo)
    with pytest.raises(ValueError, match="'add' is already served"):
        repository.add(Echo, name="add")
    assert repository.names() == ["echo", "add"]


def test_invalid_names_are_refused(repository: Repository) -> None:
    with pytest.raises(InvalidInput, match=r"invalid model name '\.\./up'"):
        repository.add(Echo, name="../up")
    with pytest.raises(InvalidInput, match="invalid version 'a/b'"):
        repository.add(Echo, name="other", default_version="a/b")
    assert repository.names() == ["echo", "add"]


def test_unknown_model(repository: Repository, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"model 'nope' is not served here \(models: echo, add\)"):
        repository.get("nope")
    with pytest.raises(NotFound, match="not served here"):
        repository.versions("nope")
    with pytest.raises(NotFound, match=r"\(models: none\)"):
        Repository(tmp_path).resolve("echo", None)


def test_versions_in_natural_order(repository: Repository, tmp_path: Path) -> None:
    assert repository.versions("echo") == ["1"]
    for version in ["10", "2", "beta", "alpha", "1"]:
        make_version(repository, "echo", version)
    (tmp_path / "echo" / "3").mkdir()  # a folder without model_info.json is no version
    assert repository.versions("echo") == ["1", "2", "10", "alpha", "beta"]
    assert repository.versions("add") == ["1"]  # versions are per model


def test_resolve(repository: Repository) -> None:
    make_version(repository, "echo", "2")
    echo = repository.get("echo")
    assert repository.resolve("echo", None) == (echo, "1")
    assert repository.resolve("echo", "") == (echo, "1")
    assert repository.resolve("echo", "1") == (echo, "1")  # the default needs no folder
    assert repository.resolve("echo", "2") == (echo, "2")


def test_resolve_unknown_version(repository: Repository) -> None:
    make_version(repository, "echo", "2")
    with pytest.raises(
        NotFound, match=r"model 'echo' has no version '3' \(versions: 1, 2\); create it with initialize"
    ):
        repository.resolve("echo", "3")
    with pytest.raises(NotFound, match="model 'add' has no version '2'"):
        repository.resolve("add", "2")
    with pytest.raises(InvalidInput, match="invalid version"):
        repository.resolve("echo", "../echo")


def test_set_default(repository: Repository) -> None:
    make_version(repository, "echo", "2")
    repository.set_default("echo", "2")
    assert repository.resolve("echo", None) == (repository.get("echo"), "2")
    assert repository.versions("echo") == ["1", "2"]  # "1" was only ever the default, and stays
    assert repository.resolve("echo", "1") == (repository.get("echo"), "1")  # so rollback can work
    repository.set_default("add", "next")  # a default that is not on disk yet
    assert repository.versions("add") == ["1", "next"]
    with pytest.raises(NotFound):
        repository.set_default("nope", "1")


def test_instances_and_runners_are_per_version(repository: Repository, tmp_path: Path) -> None:
    echo = repository.add(Echo, name="shout")
    instance = repository.instance(echo, "5")
    assert (instance.model_name, instance.version) == ("shout", "5")
    assert instance.model_dir == tmp_path / "shout" / "5"
    with repository.runner(repository.get("add"), "1") as runner:
        assert runner.predict(a=2, b=3) == 5
