"""The input and output names of an ONNX model, read from its bytes without ONNX Runtime.

The window verifies the models it offers (signature, pin, sha256) but never runs them: the
batch process opens the sessions. A package whose manifest names an input or output its
graph lacks was refused by the session check when the window opened sessions itself; it
must still be refused there, at start-up, with the same words. An ``.onnx`` file is a
protobuf ``ModelProto``, so its graph's names are a few fields deep: this reads just those
(skipping the weights by their length, without copying them), and :func:`check_model_io`
is the one check, applied here and to every ONNX Runtime session
(:class:`desktop.engine.inference.OnnxModel`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from desktop.engine.errors import ModelError

# Field numbers of onnx.proto (ModelProto.graph, GraphProto.initializer/input/output,
# ValueInfoProto.name, TensorProto.name).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_GRAPH_INPUT = 11
_GRAPH_OUTPUT = 12
_VALUE_INFO_NAME = 1
_TENSOR_NAME = 8

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Malformed(ValueError):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(field number, start, end)`` of each length-delimited field of one message;
    other wire types are skipped."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Malformed(f"field {number} runs past the end of its message")
            yield number, pos, pos + size
            pos += size
        else:
            raise _Malformed(f"unsupported wire type {wire} (field {number})")
        if pos > end:
            raise _Malformed("a field runs past the end of its message")


def _string(buf: memoryview, start: int, end: int, field: int) -> str | None:
    for number, a, b in _fields(buf, start, end):
        if number == field:
            return bytes(buf[a:b]).decode("utf-8", errors="replace")
    return None


def graph_io_names(data: bytes) -> tuple[list[str], list[str]]:
    """The graph's inputs (initializers excluded, as ONNX Runtime lists them) and outputs.

    Raises :class:`ValueError` when ``data`` is not a protobuf ModelProto with a graph.
    """
    buf = memoryview(data)
    graph = next(
        ((a, b) for number, a, b in _fields(buf, 0, len(buf)) if number == _MODEL_GRAPH), None
    )
    if graph is None:
        raise _Malformed("no graph in the file")
    inputs: list[str] = []
    outputs: list[str] = []
    weights: set[str] = set()
    for number, a, b in _fields(buf, *graph):
        if number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            name = _string(buf, a, b, _VALUE_INFO_NAME)
            if name is not None:
                (inputs if number == _GRAPH_INPUT else outputs).append(name)
        elif number == _GRAPH_INITIALIZER:
            name = _string(buf, a, b, _TENSOR_NAME)
            if name is not None:
                weights.add(name)
    return [n for n in inputs if n not in weights], outputs


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
