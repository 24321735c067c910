"""Wire codecs shared by server and client: Open Inference Protocol (v2) and native msgpack.

Pure functions over bytes, numpy arrays and protobuf messages; nothing here knows about
models, services or transports. Import the submodules (`v2`, `native`) directly.
"""
