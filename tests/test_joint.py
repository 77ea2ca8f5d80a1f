"""Models that read one input run as one session (desktop/engine/joint.py), with the very
outputs of separate sessions: checked on real chest X-rays with the shipped models."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from desktop.engine import screening
from desktop.engine.inference import Device
from desktop.engine.joint import MergeError, merge_models, open_joint
from desktop.engine.loading import read_file
from desktop.engine.manifest import load_verified_model, read_manifest
from desktop.engine.preprocess import decode_working, expand_channels
from desktop.engine.registry import load_model_set
from desktop.engine.screening import Screener

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "assets" / "models"
DATA = REPO / "tests" / "data"
#: Real chest X-rays, two of each: NLM normal and TB-positive adults (PNG), Kermany normal
#: and pneumonia children (JPEG).
FOLDERS = ("tb/normal", "tb/tuberculosis", "pneumonia/normal", "pneumonia/pneumonia")
FILES = [p for sub in FOLDERS for p in sorted((DATA / sub).iterdir())[:2]]


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _planes(spec) -> np.ndarray:
    """The real scans' grey planes of ``spec``, as the app prepares them: (N, H, W)."""
    screener = Screener(load_model_set([MODELS], Device.CPU))
    prepared = [screener.prepare(decode_working(f, *read_file(f))) for f in FILES]
    return np.stack([p.planes[spec] for p in prepared])


def test_shipped_tb_and_patient_group_share_their_backbone_bit_for_bit():
    tb, group = (read_manifest(MODELS / f"{m}.json") for m in ("tb", "agegroup"))
    assert tb.preprocessing == group.preprocessing
    wanted = (["probabilities", "activation_map"], ["probabilities"])
    models = [load_verified_model(tb), load_verified_model(group)]
    merged = merge_models(list(zip(models, wanted, strict=True)))
    nodes = [len(onnx.load_from_string(m).graph.node) for m in models]
    joint_nodes = len(onnx.load_from_string(merged.model).graph.node)
    # The backbone (and the pooling) once: far fewer nodes than the two models together,
    # and the patient group's unread activation map is not computed at all.
    assert merged.shared >= 90 and joint_nodes < 0.6 * sum(nodes)
    joint, alone = _session(merged.model), [_session(m) for m in models]
    assert not merged.takes_planes
    x = expand_channels(_planes(tb.preprocessing), 3)
    for start, size in ((0, 1), (1, 2), (3, 5)):
        batch = x[start : start + size]
        names = [n for m in merged.outputs for n in m.values()]
        together = dict(zip(names, joint.run(names, {"image": batch}), strict=True))
        for session, outputs, mapping in zip(alone, wanted, merged.outputs, strict=True):
            for name, value in zip(outputs, session.run(outputs, {"image": batch}), strict=True):
                assert np.array_equal(value, together[mapping[name]]), name
    # Real scores, not noise: the two TB-positive adults score above the two normal adults.
    scores = alone[0].run(["probabilities"], {"image": x})[0][:, 1]
    assert min(scores[2:4]) > max(scores[0:2])


def test_screener_results_are_the_same_with_and_without_the_joint_session(monkeypatch):
    models = load_model_set([MODELS], Device.CPU)
    joint = Screener(models)
    assert [(ids, j.takes_planes) for ids, _, j in joint._joints] == [
        (("tb", "agegroup"), True),
        (("pneumonia",), True),
    ]
    monkeypatch.setattr(screening, "open_joint", lambda *args: None)
    separate = Screener(models)
    assert separate._joints == []
    prepared = [joint.prepare(decode_working(f, *read_file(f))) for f in FILES]
    a, b = joint.screen(prepared), separate.screen(prepared)
    assert [r.status for r in a] == [r.status for r in b]
    assert sum(bool(r.findings) for r in a) >= 6  # chest X-rays, screened
    for x, y in zip(a, b, strict=True):
        assert x.group_estimate == y.group_estimate
        assert x.findings.keys() == y.findings.keys()
        for model_id, finding in x.findings.items():
            other = y.findings[model_id]
            assert finding.probability == other.probability
            assert finding.probabilities == other.probabilities
            assert np.array_equal(finding.activation, other.activation)
            assert finding.activation is not None and finding.activation.ndim == 2
    assert {r.group_estimate is not None for r in a if r.findings} == {True}


def test_models_of_different_input_shapes_are_not_merged():
    tb, pneumonia = (read_manifest(MODELS / f"{m}.json") for m in ("tb", "pneumonia"))
    with pytest.raises(MergeError, match="inputs differ"):
        merge_models(
            [(load_verified_model(tb), ["probabilities"]),
             (load_verified_model(pneumonia), ["probabilities"])]
        )  # fmt: skip


def _tiny(op: str, **graphs) -> bytes:
    """A one-node model y = op(x) (or an If with the given branches)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    inputs = ["x"] if not graphs else ["c"]
    node = helper.make_node(op, inputs, ["y"], **graphs)
    inits = []
    if graphs:
        inits = [helper.make_tensor("c", TensorProto.BOOL, [], [True])]
    graph = helper.make_graph([node], "g", [x], [y], initializer=inits)
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def test_graphs_outside_what_the_merge_handles_are_refused():
    plain = _tiny("Relu")
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["z"])],
        "b",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 4])],
    )
    with pytest.raises(MergeError, match="subgraph"):
        merge_models([(plain, ["y"]), (_tiny("If", then_branch=branch, else_branch=branch), ["y"])])
    with pytest.raises(MergeError, match="fewer than two"):
        merge_models([(plain, ["y"])])
    with pytest.raises(MergeError, match="no output"):
        merge_models([(plain, ["y"]), (plain, ["nope"])])
    # Two identical tiny models: the node is computed once and both outputs are its output.
    merged = merge_models([(plain, ["y"]), (plain, ["y"])])
    assert merged.shared == 1 and merged.outputs[0] == merged.outputs[1]
    x = np.array([[-1.0, 0.5, -0.0, 3.0]], dtype=np.float32)
    name = merged.outputs[0]["y"]
    assert _session(merged.model).run([name], {"x": x})[0].tolist() == [[0.0, 0.5, 0.0, 3.0]]


def test_a_joint_session_that_differs_or_a_changed_file_is_not_used(caplog):
    models = load_model_set([MODELS], Device.CPU)
    tb, group = models.findings["tb"], models.patient_group
    assert group is not None
    probe = screening._probe(tb.manifest.preprocessing)
    wanted = [["probabilities"], ["probabilities"]]
    sessions = [tb.model.session, group.model.session]
    manifests = [tb.manifest, group.manifest]
    assert open_joint(manifests, wanted, sessions, probe, 3) is not None
    # The probe's comparison really compares: the sessions swapped give other scores.
    with caplog.at_level(logging.WARNING, logger="desktop.engine.joint"):
        assert open_joint(manifests, wanted, sessions[::-1], probe, 3) is None
    assert "differs" in caplog.text
    # A model file that no longer matches its manifest is not read into a joint session.
    changed = [replace(tb.manifest, sha256="0" * 64), group.manifest]
    assert open_joint(changed, wanted, sessions, probe, 3) is None


def test_a_model_takes_grey_planes_with_the_same_outputs():
    """The shipped 3-channel models read one plane repeated: fed the plane itself (repeated
    inside the graph, in NCHW), the outputs are the same bit for bit on real scans."""
    pneumonia = read_manifest(MODELS / "pneumonia.json")
    data = load_verified_model(pneumonia)
    wanted = ["probabilities", "activation_map"]
    merged = merge_models([(data, wanted)], grey_channels=3)
    assert merged.takes_planes and merged.shared == 0
    planes = _planes(pneumonia.preprocessing)
    assert planes.shape == (len(FILES), 320, 320)
    joint, alone = _session(merged.model), _session(data)
    assert joint.get_inputs()[0].shape[1:] == [320, 320]
    names = [merged.outputs[0][n] for n in wanted]
    for start, size in ((0, 1), (1, 2), (3, 5)):
        batch = planes[start : start + size]
        together = joint.run(names, {"image": batch})
        separate = alone.run(wanted, {"image": expand_channels(batch, 3)})
        for a, b in zip(together, separate, strict=True):
            assert np.array_equal(a, b)
    # Real scores: the two Kermany pneumonia scans above the two Kermany normals.
    scores = alone.run(["probabilities"], {"image": expand_channels(planes, 3)})[0][:, 1]
    assert min(scores[6:8]) > max(scores[4:6])
    # A model whose input is not a repeated plane behind a transpose keeps its input.
    gate = read_manifest(MODELS / "modality.json")
    kept = merge_models([(load_verified_model(gate), ["probabilities"])], grey_channels=1)
    assert not kept.takes_planes
    one_channel = merge_models([(data, wanted)], grey_channels=1)
    assert not one_channel.takes_planes
