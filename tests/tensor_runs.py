"""Run a model on Open Inference Protocol tensors in-process, the way the server does: the tests of
the tensor mapping use it without a server."""

from __future__ import annotations

from modelpod.runtime.runner import Runner
from modelpod.serving.tensors import Arrays, batches, outputs_of, requests_of


def run_tensors(runner: Runner, inputs: Arrays) -> Arrays:
    """Inputs by name -> outputs by name, whichever kind of model the runner holds."""
    model = runner.model
    requests = requests_of(model, inputs, batches(model))
    results = [runner.predict(**requests[0])] if model.is_tensor_model() else runner.predict_batch(requests)
    return outputs_of(model, results)
