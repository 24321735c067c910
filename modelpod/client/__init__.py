"""Use a served model as if it were here: `Client` (blocking) and `AsyncClient` (asyncio).

    from modelpod.client import Client

    with Client("localhost:50051", model="echo") as echo:     # gRPC; "http://…" for HTTP
        echo.predict(text="hi")
        echo.version("2").train(steps=10)

Needs the client extra: `pip install "modelpod[client]"`.
"""

from modelpod.client._async_client import AsyncClient
from modelpod.client._client import Client
from modelpod.client._operations import ModelInfo

__all__ = ["AsyncClient", "Client", "ModelInfo"]

for _name in __all__:
    globals()[_name].__module__ = "modelpod.client"  # reprs and docs show the public path
