"""LitServe serving the benchmark MLP, with or without its dynamic batching.

    benchmarks/.venv-litserve/bin/python benchmarks/peers/litserve_server.py --port 8001 [--batch 32]

POST /predict {"x": [[256 floats]]} -> {"y": [10 floats]}; GET /health. Runs in its own virtual
environment (litserve and numpy only), so it imports nothing from modelpod; `mlp_numpy` comes
from `benchmarks/` on PYTHONPATH.
"""

import argparse
from typing import Any

import litserve as ls
import numpy as np
from mlp_numpy import NumpyMLP


class MLPAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.net = NumpyMLP()

    # `request` and the response stay unannotated: LitServe reads these annotations as FastAPI
    # request and response models, and a plain JSON body is what every server here is given.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return np.asarray(request["x"], dtype=np.float32).reshape(-1)

    def batch(self, inputs: list[Any]) -> Any:
        return np.stack(inputs)

    def predict(self, x: Any) -> Any:
        return self.net.forward(x)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any):  # type: ignore[no-untyped-def]
        return {"y": np.asarray(output).reshape(-1).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1, help="max_batch_size (1: no batching)")
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a batch may wait")
    options = parser.parse_args()
    timeout = options.batch_timeout if options.batch > 1 else 0.0
    api = MLPAPI(max_batch_size=options.batch, batch_timeout=timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=options.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
