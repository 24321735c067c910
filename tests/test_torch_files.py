"""PyTorch model files served without a class: a small module saved with `torch.jit.save`
(TorchScript) and `torch.export.save` (.pt2), built here offline.

In process (`Runner(PATH)`) and through one real `modelpod serve` process (tritonclient over HTTP
and gRPC, the native Client), the answers equal the original module's; the metadata comes from the
exported program, or from a declaration for TorchScript (runtime option, sidecar, archive); the
first dimension exported as dynamic turns batching on.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from modelpod import Client, ModelLoadError, Runner  # noqa: E402
from modelpod.runtime.declared_specs import parse_specs  # noqa: E402
from modelpod.runtime.formats import detect  # noqa: E402
from modelpod.types import TensorSpec  # noqa: E402

from conftest import ServerProcess, launch  # noqa: E402


class Scorer(torch.nn.Module):  # type: ignore[misc]
    """Two inputs, two named outputs of different datatypes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x) * scale
        return {"logits": logits, "label": logits.argmax(-1)}


X_SPECS = "x:FP32[-1,8] scale:FP32[-1,1]"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    scorer = Scorer().eval()
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    with warnings.catch_warnings():  # torch.jit is deprecated, and still what people ship
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(mlp), str(folder / "mlp.pt"))
        declaration = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]}
        torch.jit.save(torch.jit.script(mlp), str(folder / "packed.pt"),
                       _extra_files={"modelpod.json": json.dumps(declaration)})  # fmt: skip
        torch.jit.save(torch.jit.script(scorer), str(folder / "scorer.pt"))
    sidecar = {"inputs": [spec.as_dict() for spec in parse_specs(X_SPECS, "test")]}
    (folder / "scorer.pt.json").write_text(json.dumps(sidecar))
    batch = torch.export.Dim("batch")
    example = (torch.zeros(2, 8), torch.ones(2, 1))
    program = torch.export.export(scorer, example, dynamic_shapes={"x": {0: batch}, "scale": {0: batch}})
    torch.export.save(program, str(folder / "scorer.pt2"))
    fixed = torch.export.export(mlp, (torch.zeros(4, 8),))  # no dynamic dimension: no batching
    torch.export.save(fixed, str(folder / "fixed.pt2"))
    return {"folder": folder, "scorer": scorer, "mlp": mlp}


def _scorer(files: dict[str, Any], x: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        answer = files["scorer"](torch.from_numpy(x), torch.from_numpy(scale))
    return {key: value.numpy() for key, value in answer.items()}


def _mlp(files: dict[str, Any], x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return files["mlp"](torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


ROWS = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
SCALES = np.arange(1, 6, dtype=np.float32).reshape(5, 1)
SCORER_SPECS = (
    (TensorSpec("x", "FP32", (-1, 8)), TensorSpec("scale", "FP32", (-1, 1))),
    (TensorSpec("logits", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))),
)


# -- in process ------------------------------------------------------------------------------------


def test_formats_are_recognised(files: dict[str, Any]) -> None:
    assert detect(files["folder"] / "mlp.pt").name == "torchscript"
    assert detect(files["folder"] / "scorer.pt2").name == "torch-export"


@pytest.mark.parametrize("name", ["scorer.pt", "scorer.pt2"])
def test_the_scorer_answers_as_the_module_with_exact_metadata(files: dict[str, Any], name: str) -> None:
    runner = Runner(files["folder"] / name, device="cpu")
    assert (runner.model.input_specs(), runner.model.output_specs()) == SCORER_SPECS
    answer = runner.predict(x=ROWS, scale=SCALES)
    expected = _scorer(files, ROWS, SCALES)
    np.testing.assert_allclose(answer["logits"], expected["logits"], atol=1e-6)
    np.testing.assert_array_equal(answer["label"], expected["label"])
    assert runner.batching.max_batch_size == 32
    assert runner.model.platform == ("pytorch_libtorch" if name.endswith(".pt") else "pytorch_export")  # type: ignore[attr-defined]


def test_torchscript_inputs_from_an_option_or_the_archive(files: dict[str, Any]) -> None:
    by_option = Runner(files["folder"] / "mlp.pt", inputs="input:FP32[-1,8]")
    packed = Runner(files["folder"] / "packed.pt")
    for runner in (by_option, packed):
        assert runner.model.input_specs() == (TensorSpec("input", "FP32", (-1, 8)),)
        assert runner.model.output_specs() == (TensorSpec("output", "FP32", (-1, 3)),)  # probed
        np.testing.assert_allclose(runner.predict(input=ROWS)["output"], _mlp(files, ROWS), atol=1e-6)
    renamed = Runner(files["folder"] / "mlp.pt", inputs="input:FP32[-1,8]", outputs="scores:FP32[-1,3]")
    np.testing.assert_allclose(renamed.predict(input=ROWS[:2])["scores"], _mlp(files, ROWS[:2]), atol=1e-6)


def test_torchscript_without_a_declaration_says_how_to_give_one(files: dict[str, Any]) -> None:
    with pytest.raises(ModelLoadError, match=r"declare them: --runtime-option inputs=.*mlp.pt.json"):
        Runner(files["folder"] / "mlp.pt")
    with pytest.raises(ModelLoadError, match=r"forward takes \['input'\], the declared inputs are \['x'\]"):
        Runner(files["folder"] / "mlp.pt", inputs="x:FP32[-1,8]")
    with pytest.raises(ModelLoadError, match=r"expected NAME:DATATYPE\[DIMS\]"):
        Runner(files["folder"] / "mlp.pt", inputs="x FP32 -1 8")
    with pytest.raises(ModelLoadError, match="unknown datatype 'FLOAT'"):
        Runner(files["folder"] / "mlp.pt", inputs="input:FLOAT[-1,8]")


def test_a_program_exported_with_fixed_shapes_does_not_batch(files: dict[str, Any]) -> None:
    runner = Runner(files["folder"] / "fixed.pt2")
    assert runner.model.input_specs() == (TensorSpec("input", "FP32", (4, 8)),)
    assert runner.model.output_specs() == (TensorSpec("output", "FP32", (4, 3)),)
    assert runner.batching.max_batch_size == 1
    np.testing.assert_allclose(runner.predict(input=ROWS[:4])["output"], _mlp(files, ROWS[:4]), atol=1e-6)
    with pytest.raises(ModelLoadError, match="no free first dimension to batch on"):
        Runner(files["folder"] / "fixed.pt2", max_batch_size=4)
    assert Runner(files["folder"] / "scorer.pt2", max_batch_size=4).batching.max_batch_size == 4


def test_a_damaged_archive_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "broken.pt2").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    with pytest.raises(ModelLoadError, match=r"not a torch\.export archive torch can load"):
        Runner(tmp_path / "broken.pt2", runtime="torch-export")


# -- through a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(files: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = files["folder"]
    # the second model comes after the flags (launch puts args last): both are served
    references, after = (f"script={folder / 'scorer.pt'}",), (f"exported={folder / 'scorer.pt2'}",)
    started = launch(references, tmp_path_factory.mktemp("appdata"), args=after)
    yield started
    started.stop(timeout=15)


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("model", ["script", "exported"])
def test_tritonclient_gets_the_modules_answers(
    server: ServerProcess, files: dict[str, Any], kind: str, model: str
) -> None:
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url[7:] if kind == "http" else server.grpc_address)
    tensors = []
    for name, value in (("x", ROWS), ("scale", SCALES)):
        tensor = module.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    answer = client.infer(model, tensors)
    expected = _scorer(files, ROWS, SCALES)
    np.testing.assert_allclose(answer.as_numpy("logits"), expected["logits"], atol=1e-6)
    np.testing.assert_array_equal(answer.as_numpy("label"), expected["label"])
    metadata = client.get_model_metadata(model)
    if kind == "grpc":
        metadata = {"platform": metadata.platform, "inputs": [_spec(t) for t in metadata.inputs],
                    "outputs": [_spec(t) for t in metadata.outputs]}  # fmt: skip
    assert metadata["inputs"] == [spec.as_dict() for spec in SCORER_SPECS[0]]
    assert metadata["outputs"] == [spec.as_dict() for spec in SCORER_SPECS[1]]
    assert metadata["platform"] == ("pytorch_libtorch" if model == "script" else "pytorch_export")


def _spec(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def test_the_native_client_and_batching(server: ServerProcess, files: dict[str, Any]) -> None:
    with Client(server.grpc_address, model="exported") as native:
        answer = native.predict(x=ROWS[:2], scale=SCALES[:2])
    np.testing.assert_allclose(answer["logits"], _scorer(files, ROWS[:2], SCALES[:2])["logits"], atol=1e-6)
    rows = np.random.default_rng(3).standard_normal((48, 8)).astype(np.float32)

    def one(row: np.ndarray) -> list[float]:
        body = {"x": [row.tolist()], "scale": [[1.0]]}
        response = httpx.post(f"{server.http_url}/models/script/predict", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["logits"][0]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(12) as pool:
        answers = np.array(list(pool.map(one, rows)), dtype=np.float32)
    np.testing.assert_allclose(
        answers, _scorer(files, rows, np.ones((48, 1), np.float32))["logits"], atol=1e-5
    )
    listing = httpx.get(f"{server.http_url}/models/script").json()
    assert max(int(size) for size in listing["versions"][0]["batch_sizes"]) > 1, listing["versions"][0]
    wrong = httpx.post(f"{server.http_url}/models/script/predict", json={"x": [[1.0, 2.0]], "scale": [[1.0]]})
    assert wrong.status_code == 400
    assert "expected [-1, 8]" in wrong.json()["error"]


def test_an_archive_is_read_once_for_its_metadata_and_its_load(
    files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelpod.runtime import torch_export_runtime

    (tmp_path / "copy.pt2").write_bytes((files["folder"] / "scorer.pt2").read_bytes())  # not described yet
    reads: list[Path] = []
    real = torch_export_runtime.load_program
    monkeypatch.setattr(torch_export_runtime, "load_program", lambda t, p: reads.append(p) or real(t, p))
    runner = Runner(tmp_path / "copy.pt2", device="cpu")
    np.testing.assert_allclose(
        runner.predict(x=ROWS, scale=SCALES)["logits"], _scorer(files, ROWS, SCALES)["logits"], atol=1e-6
    )
    assert reads == [tmp_path / "copy.pt2"]
    again = Runner(tmp_path / "copy.pt2", device="cpu")  # described already: its load reads it
    again.load()
    assert len(reads) == 2
