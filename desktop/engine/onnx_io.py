"""ONNX files read without ONNX Runtime or the ``onnx`` package: one schema of the fields
MedScreen reads, for the model check and for the merge of models into one session.

An ``.onnx`` file is a protobuf ``ModelProto``. Two parts of MedScreen read one: the model
check (the window verifies the models it offers — signature, pin, sha256 — but never runs
them: a package whose manifest names an input or output its graph lacks must be refused
there, at start-up, with the words the session check uses: :func:`check_model_bytes`), and
:mod:`desktop.engine.joint`, which merges models that read the same input. Both parse with
protobuf's own runtime (a dependency of ONNX Runtime) through :data:`SCHEMA`, just the
fields they read (field numbers from onnx/onnx.proto); protobuf keeps every other field as
it was read, so a merged model keeps what the merge does not touch.

``google.protobuf`` is imported on first use (:func:`messages`), in the thread that reads a
model (the window's model worker), not at the window's start-up; it costs the window
~1.3 MiB resident (benchmarks/bench_onnx_reader_rss.py). This replaced a hand-written
reader of the same wire format that had its own copy of the field numbers.

:func:`check_model_io` is the one check of the names, applied here and to every ONNX
Runtime session (:class:`desktop.engine.inference.OnnxModel`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from desktop.engine.errors import ModelError

#: The ONNX fields MedScreen reads, per message: ``(field, number, repeated, kind)``, kind a
#: scalar type (:data:`_SCALARS`) or another message of the schema. ``bytes`` marks fields
#: only checked for presence (subgraphs, functions, sparse initializers): never parsed.
SCHEMA: dict[str, list[tuple[str, int, bool, str]]] = {
    "Model": [
        ("ir_version", 1, False, "int64"),
        ("graph", 7, False, "Graph"),
        ("opset_import", 8, True, "OpsetId"),
        ("functions", 25, True, "bytes"),
    ],
    "OpsetId": [("domain", 1, False, "string"), ("version", 2, False, "int64")],
    "Graph": [
        ("node", 1, True, "Node"),
        ("name", 2, False, "string"),
        ("initializer", 5, True, "Tensor"),
        ("input", 11, True, "ValueInfo"),
        ("output", 12, True, "ValueInfo"),
        ("value_info", 13, True, "ValueInfo"),
        ("sparse_initializer", 15, True, "bytes"),
    ],
    "Node": [
        ("input", 1, True, "string"),
        ("output", 2, True, "string"),
        ("name", 3, False, "string"),
        ("op_type", 4, False, "string"),
        ("attribute", 5, True, "Attribute"),
        ("domain", 7, False, "string"),
    ],
    "Attribute": [
        ("name", 1, False, "string"),
        ("i", 3, False, "int64"),
        ("g", 6, False, "bytes"),
        ("ints", 8, True, "int64"),
        ("graphs", 11, True, "bytes"),
        ("type", 20, False, "int32"),
    ],
    "Tensor": [
        ("dims", 1, True, "int64"),
        ("data_type", 2, False, "int32"),
        ("name", 8, False, "string"),
        ("raw_data", 9, False, "bytes"),
        ("data_location", 14, False, "int32"),
    ],
    "ValueInfo": [("name", 1, False, "string"), ("type", 2, False, "Type")],
    "Type": [("tensor_type", 1, False, "TensorType")],
    "TensorType": [("elem_type", 1, False, "int32"), ("shape", 2, False, "Shape")],
    "Shape": [("dim", 1, True, "Dim")],
    "Dim": [("dim_value", 1, False, "int64"), ("dim_param", 2, False, "string")],
}
_SCALARS = ("string", "bytes", "int64", "int32")


@cache
def messages() -> dict[str, Any]:
    """The schema's message classes, built once in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FieldDescriptorProto
    scalars = {kind: getattr(proto, f"TYPE_{kind.upper()}") for kind in _SCALARS}
    package = "medscreen_onnx_subset"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package}.proto", package=package, syntax="proto2"
    )
    for name, fields in SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, repeated, kind in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                label=proto.LABEL_REPEATED if repeated else proto.LABEL_OPTIONAL,
                type=scalars.get(kind, proto.TYPE_MESSAGE),
            )
            if kind not in scalars:
                field.type_name = f".{package}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in SCHEMA
    }


def parse_model(data: bytes) -> Any:
    """The ``Model`` message of :data:`SCHEMA` read from ``data``; :class:`ValueError` when
    the bytes are not a protobuf message at all."""
    from google.protobuf.message import DecodeError

    model = messages()["Model"]()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(str(exc) or "not a protobuf message") from exc
    return model


def graph_io_names(data: bytes) -> tuple[list[str], list[str]]:
    """The graph's inputs (initializers excluded, as ONNX Runtime lists them) and outputs.

    Raises :class:`ValueError` when ``data`` is not a protobuf ModelProto with a graph.
    """
    model = parse_model(data)
    if not model.HasField("graph"):
        raise ValueError("no graph in the file")
    graph = model.graph
    weights = {_text(tensor.name) for tensor in graph.initializer}
    inputs = [_text(value.name) for value in graph.input]
    outputs = [_text(value.name) for value in graph.output]
    return [name for name in inputs if name not in weights], outputs


def _text(name: str | bytes) -> str:
    """A name as text: protobuf hands a proto2 string that is not UTF-8 back as bytes."""
    return name.decode("utf-8", errors="replace") if isinstance(name, bytes) else name


def check_model_io(
    inputs: Iterable[str], outputs: Iterable[str], input_name: str, wanted: Iterable[str]
) -> None:
    """The model must have the manifest's input and every output it reads; raises
    :class:`ModelError` saying what it has instead."""
    inputs = list(inputs)
    if input_name not in inputs:
        raise ModelError(f"model has no input {input_name!r} (it has {inputs})")
    available = set(outputs)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ModelError(f"model lacks outputs {missing} (it has {sorted(available)})")


def check_model_bytes(data: bytes, input_name: str, wanted: Iterable[str]) -> None:
    """:func:`check_model_io` on the names in an ``.onnx`` file's bytes; a file that is not
    an ONNX model at all is a :class:`ModelError` too."""
    try:
        inputs, outputs = graph_io_names(data)
    except (ValueError, IndexError) as exc:
        raise ModelError(f"is not a readable ONNX model ({exc})") from exc
    check_model_io(inputs, outputs, input_name, wanted)
