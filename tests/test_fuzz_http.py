"""Fuzz the HTTP API of a real server with schemathesis, from the server's own OpenAPI document.

Every operation of `GET /openapi.json` is called with requests generated from its schema, valid
and invalid alike; each answer must be no 5xx, a status and a content type the document names,
and a body its schema allows. The examples are bounded and derandomized, so the run takes tens of
seconds and fails the same way every time it fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from modelpod.server.docs import openapi_document

from conftest import ROOT, ServerProcess, launch

FAULTS = ROOT / "tests" / "servable_faults.py"
MODELS = ("careful", "affine")
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(
        tuple(f"{FAULTS}:{name.title()}" for name in MODELS), tmp_path_factory.mktemp("fuzz-http") / "appdata"
    )
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output, process.output


# The document the server serves (a test below checks that it is this one): loaded when the module
# is, since pytest makes one test of each operation before any server starts.
schema = schemathesis.openapi.from_dict(openapi_document(MODELS)).exclude(
    path_regex=r"/unload$|/train/events$"  # unloading makes a model answer 503 on purpose; events stream
)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_every_operation_answers_malformed_requests_with_a_client_error(
    fuzzed: ServerProcess, case: schemathesis.Case
) -> None:
    case.call_and_validate(base_url=fuzzed.http_url, checks=CHECKS, timeout=30)


def test_the_document_fuzzed_is_the_one_the_server_serves(fuzzed: ServerProcess) -> None:
    served = httpx.get(f"{fuzzed.http_url}/openapi.json", timeout=30).json()
    assert served == json.loads(json.dumps(openapi_document(MODELS)))


def test_the_server_still_serves_after_the_fuzzing(fuzzed: ServerProcess) -> None:
    answer = httpx.post(f"{fuzzed.http_url}/models/careful/predict", json={"text": "ok"}, timeout=30)
    assert answer.json() == {"text": "ok", "length": 2}
