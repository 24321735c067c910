"""The network edges: HTTP (Starlette on uvicorn) and gRPC (grpcio asyncio) around one service."""
