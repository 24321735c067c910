"""Optional parts of modelpod and the pip extra that installs each: the one place that knows it.

A feature that needs an extra imports what it needs inside `needs_extra(...)`, so that a missing
extra stops with one line a user can act on, e.g.
`--store needs the store extra: pip install "modelpod[store]" (no module named 'sqlalchemy')`,
instead of a traceback from deep inside an import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# What each extra enables, for messages and `modelpod doctor`. The extras themselves are declared in
# pyproject.toml; tests/test_dependencies.py checks that each one declares what its modules import.
FEATURES: dict[str, str] = {
    "server": "modelpod serve: HTTP and gRPC servers, metrics, the status page and /docs",
    "client": "Client and AsyncClient over HTTP and gRPC; modelpod train (--follow: a progress bar)",
    "store": "Store (SQLite), modelpod models, modelpod serve --store URL --model NAME",
    "postgres": "a Store in PostgreSQL (postgresql+psycopg://...)",
    "ray": "modelpod serve --backend ray: replicas on Ray Serve",
    "torch": "torch tensors as inputs, devices (cuda, mps), custom_ops, torch profiling; "
    "modelpod serve model.pt / model.pt2: TorchScript and torch.export archives",
    "transformers": "modelpod serve FOLDER: Hugging Face transformers folders (save_pretrained)",
    "mlflow": "modelpod serve FOLDER: MLflow models (MLmodel) through their pyfunc flavor",
    "onnx": "modelpod serve model.onnx: ONNX graphs run by onnxruntime",
    "sklearn": "modelpod serve model.joblib: scikit-learn estimators from joblib or pickle files",
    "otel": "modelpod serve --otel: OpenTelemetry traces of every request, exported over OTLP",
    "examples": "the bundled scikit-learn examples (examples/iris.py)",
    "embeddings": "the sentence-transformers embedding example",
    "generation": "the tiny GPT-2 example (examples/tiny_gpt2.py): token-level batching with transformers",
}


class MissingExtra(ImportError):
    """A feature was asked for whose extra is not installed; the message says what to install."""


def install_hint(extra: str) -> str:
    return f'pip install "modelpod[{extra}]"'


@contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Turns a third-party module missing inside the block into `MissingExtra` naming `extra`.

    Only a missing third-party module is translated: a broken modelpod module is a bug, and
    its traceback is kept.
    """
    try:
        yield
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if not missing or missing == "modelpod":
            raise
        message = f"{feature} needs the {extra} extra: {install_hint(extra)} (no module named {missing!r})"
        raise MissingExtra(message, name=error.name) from error
