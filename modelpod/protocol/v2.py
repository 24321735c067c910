"""Open Inference Protocol (KServe V2) codecs: JSON over HTTP, binary tensor data, and gRPC.

Decoders read untrusted bytes or messages and raise `InvalidInput`, naming the field, for
anything malformed. Encoders take values from our own code and raise `TypeError` (or
`ValueError` for an out-of-range parameter) when a value has no protocol form: a bug in the
caller, not a bad request.

Conventions, all as Triton does them, so that NVIDIA's tritonclient interoperates:

* BYTES tensors are numpy object arrays of `bytes`; binary BYTES data is each element as a
  4-byte little-endian length followed by its bytes; JSON BYTES data is UTF-8 strings.
* A BYTES tensor that is not valid UTF-8 is sent as binary data even where JSON was asked
  for, because a JSON string cannot hold it; clients that honour `binary_data_size`
  (tritonclient does) read it unchanged. Base64 was rejected: a reader cannot tell it apart
  from text.
* NaN and infinities are valid FP values. JSON has no literal for them, so they are written
  as the strings "NaN", "Infinity" and "-Infinity" (numpy parses these back); on input those
  strings and the bare tokens Python and rapidjson write are both accepted.
* Decoded arrays are writable copies, so a model may change them in place.

This module is the public face of the protocol; import from it. The code lives beside it:
`v2_tensors` (datatypes, shapes, raw and JSON tensor data), `v2_messages` (the decoded
request and response), `v2_http` (JSON and binary bodies), `v2_grpc` (protobuf messages and
parameters) and `v2_metadata` (server and model descriptions).
"""

from modelpod.protocol.v2_grpc import (
    decode_grpc_request,
    decode_grpc_response,
    encode_grpc_request,
    encode_grpc_response,
    from_grpc_parameter,
    get_grpc_parameters,
    set_grpc_parameters,
    to_grpc_parameter,
)
from modelpod.protocol.v2_http import (
    HEADER_LENGTH,
    decode_http_request,
    decode_http_response,
    encode_http_request,
    encode_http_request_parts,
    encode_http_response,
    encode_http_response_parts,
    error_json,
    parse_header_length,
)
from modelpod.protocol.v2_messages import (
    InferRequest,
    InferResponse,
    ParameterValue,
    RequestedOutput,
    select_outputs,
)
from modelpod.protocol.v2_metadata import model_metadata_grpc, model_metadata_json, server_metadata_json
from modelpod.protocol.v2_tensors import MAX_ELEMENTS, Array

__all__ = [
    # tensors and messages
    "Array",
    "MAX_ELEMENTS",
    "ParameterValue",
    "RequestedOutput",
    "InferRequest",
    "InferResponse",
    "select_outputs",
    # HTTP
    "HEADER_LENGTH",
    "parse_header_length",
    "decode_http_request",
    "encode_http_response",
    "encode_http_response_parts",
    "encode_http_request",
    "encode_http_request_parts",
    "decode_http_response",
    "error_json",
    # gRPC
    "decode_grpc_request",
    "encode_grpc_response",
    "encode_grpc_request",
    "decode_grpc_response",
    "to_grpc_parameter",
    "from_grpc_parameter",
    "set_grpc_parameters",
    "get_grpc_parameters",
    # metadata
    "server_metadata_json",
    "model_metadata_json",
    "model_metadata_grpc",
]
