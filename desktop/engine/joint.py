"""One ONNX Runtime session for models that read the same input: what they compute alike is
computed once.

Why: the shipped TB and patient-group models are two heads on one frozen backbone (MobileNet
v1 α 0.25 with its ImageNet weights, at 224², on the same preprocessed input), so running them
as two sessions computed the same backbone twice for every chest X-ray: ~1.8 of a JPEG scan's
~19 ms of CPU in the batch (measured, 2-core VM). Merged, the backbone runs once and feeds
both heads.

How: :func:`merge_models` joins the models' graphs into one and removes what is computed
twice, exactly: initializers with the same bytes become one, and a node whose operator,
domain, attributes and (already merged) inputs equal an earlier node's is dropped for it, in
each graph's topological order; nodes that no wanted output needs are pruned. Nothing is
approximated or re-fused by hand: the same operators run on the same values, so the outputs
are the separate sessions' outputs bit for bit (tests/test_joint.py, on real scans; and
:func:`open_joint` checks it again on a probe batch before the joint session is used, falling
back to the separate sessions if they ever differ).

Also, since every 3-channel input of the app is one grey plane repeated, a merged model (of
one model or several) whose input goes straight to tf2onnx's NHWC -> NCHW transpose takes the
planes themselves and repeats them in NCHW (:func:`_take_planes`): the first convolution reads
the same tensor, without NumPy interleaving the planes into channels and ONNX Runtime
transposing them back (~0.65 ms a scan for the shipped pneumonia and TB inputs).

The ONNX files are read with protobuf's own runtime (a dependency of ONNX Runtime) through
the schema of only the fields MedScreen reads (:data:`desktop.engine.onnx_io.SCHEMA`, which
the model check uses too); every other field is kept as it was read (protobuf keeps unknown
fields), so the ``onnx`` package, ~1-2 s to import, is not needed at run time.
Graphs the merge does not understand (subgraphs, functions, sparse or external initializers,
several inputs, different opsets, random operators) are refused with :class:`MergeError`,
and the models then run as separate sessions, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from desktop.engine.errors import ModelError
from desktop.engine.inference import CUDA, Device, create_session
from desktop.engine.manifest import ModelManifest, load_verified_model
from desktop.engine.onnx_io import messages, parse_model
from desktop.engine.preprocess import expand_channels

log = logging.getLogger(__name__)

#: Operators whose two calls on the same inputs may differ: never merged (the merge refuses).
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)  # fmt: skip


class MergeError(ValueError):
    """The models cannot be merged safely (the reason says why); run them separately."""


_FLOAT, _INT64_TYPE = 1, 7  # TensorProto.DataType
_ATTRIBUTE_INT = 2  # AttributeProto.AttributeType.INT
#: The permutation tf2onnx puts before a Keras model's first convolution (NHWC -> NCHW).
_NHWC_TO_NCHW = [0, 3, 1, 2]


@dataclass(frozen=True)
class Merged:
    """A merged model: its bytes, and for each source model its wanted outputs' names in it."""

    model: bytes
    outputs: tuple[Mapping[str, str], ...]
    shared: int  # nodes computed once for several models
    takes_planes: bool = False  # the input is grey planes (N, H, W), not (N, H, W, C) images


def merge_models(
    models: Sequence[tuple[bytes, Sequence[str]]], *, grey_channels: int = 0
) -> Merged:
    """One ONNX model computing every wanted output of ``models`` (each: model bytes and the
    names of the outputs wanted from it), with what they compute alike computed once.

    All models must read one input of the same type and shape and use the same IR version
    and opsets. Raises :class:`MergeError` when a graph is outside what the merge handles.

    ``grey_channels``: the models' (N, H, W, C) input is always one grey plane repeated over
    its C channels (preprocess.expand_channels), so when C is that and the input goes only to
    the NHWC -> NCHW transpose that tf2onnx puts first, the merged model takes the planes
    (N, H, W) instead and repeats them itself, in NCHW (:func:`_take_planes`; then
    :attr:`Merged.takes_planes`). One model is enough for this.
    """
    if not models or (len(models) < 2 and not grey_channels):
        raise MergeError("nothing to merge: fewer than two models")
    classes = messages()
    parsed = [parse_model(data) for data, _wanted in models]
    first = parsed[0]
    opsets = sorted((o.domain, o.version) for o in first.opset_import)
    input_type: Any = None
    input_name = ""
    for model in parsed:
        if sorted((o.domain, o.version) for o in model.opset_import) != opsets:
            raise MergeError("the models use different opsets")
        if model.ir_version != first.ir_version:
            raise MergeError("the models have different IR versions")
        if model.functions or model.graph.sparse_initializer:
            raise MergeError("model functions or sparse initializers are not merged")
        inputs = model.graph.input
        if len(inputs) != 1 or inputs[0].name in {t.name for t in model.graph.initializer}:
            raise MergeError("each model must have exactly one input, not an initializer")
        if input_type is None:
            input_type, input_name = inputs[0].type, inputs[0].name
        elif inputs[0].type != input_type:
            raise MergeError("the models' inputs differ in type or shape")

    out = classes["Model"]()
    out.CopyFrom(first)
    graph = out.graph
    for name in ("node", "initializer", "output", "value_info"):
        graph.ClearField(name)
    graph.name = "+".join(m.graph.name for m in parsed)[:200]
    Node, Tensor, ValueInfo = classes["Node"], classes["Tensor"], classes["ValueInfo"]
    tensors: dict[bytes, str] = {}  # an initializer's bytes without its name -> merged name
    computed: dict[tuple[Any, ...], list[str]] = {}  # a node's key -> its merged outputs
    shared = 0
    producers: dict[str, Any] = {}  # merged tensor name -> the merged node that makes it
    initial: dict[str, Any] = {}  # merged initializer name -> the initializer
    wanted_by_model: list[dict[str, str]] = []
    graph_outputs: dict[str, Any] = {}  # merged output name -> its type
    for k, (model, (_data, wanted)) in enumerate(zip(parsed, models, strict=True)):
        prefix = f"m{k}/"
        merged: dict[str, str] = {model.graph.input[0].name: input_name}
        for tensor in model.graph.initializer:
            if tensor.data_location == 1:  # EXTERNAL
                raise MergeError("initializers stored outside the model are not merged")
            key = Tensor()
            key.CopyFrom(tensor)
            key.ClearField("name")
            content = key.SerializeToString(deterministic=True)
            if content not in tensors:
                key.name = prefix + tensor.name
                tensors[content] = key.name
                initial[key.name] = key
            merged[tensor.name] = tensors[content]
        for node in model.graph.node:
            if node.op_type in _NONDETERMINISTIC:
                raise MergeError(f"operator {node.op_type} is not deterministic")
            for attribute in node.attribute:
                if attribute.HasField("g") or attribute.graphs:
                    raise MergeError(f"operator {node.op_type} has a subgraph")
            try:
                inputs = tuple(merged[name] if name else "" for name in node.input)
            except KeyError as exc:
                raise MergeError(f"graph is not in topological order ({exc})") from None
            key = (
                node.domain,
                node.op_type,
                inputs,
                tuple(a.SerializeToString(deterministic=True) for a in node.attribute),
                len(node.output),
            )
            if key in computed:
                for name, same in zip(node.output, computed[key], strict=True):
                    if name:
                        merged[name] = same
                shared += 1
                continue
            copy = Node()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            copy.ClearField("input")
            copy.input.extend(inputs)
            outputs = [prefix + name if name else "" for name in node.output]
            copy.ClearField("output")
            copy.output.extend(outputs)
            for name, new in zip(node.output, outputs, strict=True):
                if name:
                    merged[name] = new
                    producers[new] = copy
            computed[key] = outputs
        types = {o.name: o.type for o in model.graph.output}
        names: dict[str, str] = {}
        for name in wanted:
            if name not in types:
                raise MergeError(f"model {k} has no output {name!r}")
            new = merged[name]
            if new not in producers:
                raise MergeError(f"output {name!r} is an input or a constant")
            graph_outputs.setdefault(new, types[name])
            names[name] = new
        wanted_by_model.append(names)

    # Keep only what the wanted outputs need, in the merged (topological) order.
    needed: set[str] = set()
    stack = list(graph_outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    kept = {id(n) for name, n in producers.items() if name in needed}
    seen: set[int] = set()
    for node in producers.values():
        if id(node) in kept and id(node) not in seen:
            seen.add(id(node))
            graph.node.append(node)
    graph.initializer.extend(t for name, t in initial.items() if name in needed)
    for name, kind in graph_outputs.items():
        graph.output.append(ValueInfo(name=name, type=kind))
    planes = bool(grey_channels) and _take_planes(out, grey_channels)
    return Merged(out.SerializeToString(), tuple(wanted_by_model), shared, planes)


def _take_planes(model: Any, channels: int) -> bool:
    """Make ``model`` read grey planes (N, H, W) where it read (N, H, W, ``channels``) images
    of one plane repeated, if its input goes only to a transpose to NCHW: that transpose
    becomes a reshape to (N, 1, H, W) and a concatenation of ``channels`` copies along C.

    The first layer then reads the very tensor it read before, value for value, while the
    batch's planes need no interleaving into channels (~0.5 ms of a scan's NumPy copies for
    the shipped 224² and 320² inputs) and ONNX Runtime no strided transpose (~0.4 ms for
    320²). Returns False, changing nothing, when the graph is not of that form.
    """
    classes = messages()
    graph = model.graph
    source = graph.input[0]
    dims = source.type.tensor_type.shape.dim
    if (
        source.type.tensor_type.elem_type != _FLOAT
        or len(dims) != 4
        or dims[3].dim_value != channels
        or not (dims[1].dim_value > 0 and dims[2].dim_value > 0)
    ):
        return False
    users = [(i, n) for i, n in enumerate(graph.node) if source.name in n.input]
    if len(users) != 1:
        return False
    index, transpose = users[0]
    perms = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
    if (
        transpose.op_type != "Transpose"
        or transpose.domain not in ("", "ai.onnx")
        or list(transpose.input) != [source.name]
        or perms != [_NHWC_TO_NCHW]
    ):
        return False
    height, width = dims[1].dim_value, dims[2].dim_value
    shape = classes["Tensor"](
        name="grey/nchw_shape",
        dims=[4],
        data_type=_INT64_TYPE,
        raw_data=np.array([0, 1, height, width], dtype="<i8").tobytes(),
    )
    reshape = classes["Node"](
        name="grey/reshape",
        op_type="Reshape",
        input=[source.name, shape.name],
        output=["grey/nchw1"],
    )
    concat = classes["Node"](
        name="grey/channels",
        op_type="Concat",
        input=["grey/nchw1"] * channels,
        output=list(transpose.output),
    )
    concat.attribute.add(name="axis", i=1, type=_ATTRIBUTE_INT)
    nodes = list(graph.node)
    nodes[index : index + 1] = [reshape, concat]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.append(shape)
    del dims[3]
    return True


class JointModel:
    """Models that read one input, in one session (:func:`merge_models`): one run gives each
    model its outputs."""

    def __init__(self, session: ort.InferenceSession, merged: Merged) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name
        self._names = list(dict.fromkeys(n for m in merged.outputs for n in m.values()))
        self._outputs = merged.outputs
        #: True: :meth:`run` takes grey planes (N, H, W), not (N, H, W, C) model inputs.
        self.takes_planes = merged.takes_planes

    def run(self, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Each model's wanted outputs (by its own output names), in the models' order."""
        found = self._session.run(self._names, {self._input: batch})
        values = dict(zip(self._names, found, strict=True))
        return [{name: values[new] for name, new in m.items()} for m in self._outputs]


def open_joint(
    manifests: Sequence[ModelManifest],
    outputs: Sequence[Sequence[str]],
    sessions: Sequence[ort.InferenceSession],
    probe: np.ndarray,
    channels: int,
) -> JointModel | None:
    """One session for models already loaded as ``sessions`` that read one input of
    ``channels`` repeated grey planes, or None to keep those sessions.

    It is worth having when the models compute something alike, or when it can take the
    grey planes themselves (:func:`merge_models`). The model bytes are read again through
    :func:`load_verified_model` (the manifest's sha256 is checked again: a file changed since
    it was loaded is not used). The session runs on the device and with the threads of the
    first one, and is used only if it gives the loaded sessions' outputs bit for bit on
    ``probe``, a batch of grey planes (N, H, W) in the models' value range; otherwise None,
    with the reason logged.
    """
    ids = "+".join(m.id for m in manifests)
    try:
        merged = merge_models(
            [(load_verified_model(m), names) for m, names in zip(manifests, outputs, strict=True)],
            grey_channels=channels,
        )
        if not (merged.shared or merged.takes_planes):
            log.debug("%s: one session would gain nothing; kept separate", ids)
            return None
        first = sessions[0]
        device = Device.CUDA if first.get_providers()[0] == CUDA else Device.CPU
        threads = first.get_session_options().intra_op_num_threads or None
        session, _report = create_session(merged.model, ids, device, threads)
        joint = JointModel(session, merged)
        images = expand_channels(probe, channels)
        together = joint.run(probe if joint.takes_planes else images)
        for session, names, got in zip(sessions, outputs, together, strict=True):
            alone = session.run(list(names), {session.get_inputs()[0].name: images})
            for name, value in zip(names, alone, strict=True):
                if not np.array_equal(value, got[name]):
                    log.warning("%s: the joint session differs on %s; kept separate", ids, name)
                    return None
    except (MergeError, ModelError) as exc:
        log.info("%s run as separate sessions: %s", ids, exc)
        return None
    except Exception as exc:  # an ONNX Runtime refusal: the separate sessions still work
        log.warning("%s run as separate sessions (%s)", ids, type(exc).__name__)
        return None
    log.debug(
        "%s run as one session (%d nodes computed once, grey planes in: %s)",
        ids,
        merged.shared,
        merged.takes_planes,
    )
    return joint
