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
from desktop.engine.preprocess import decode_working
from desktop.engine.registry import load_model_set
from desktop.engine.screening import Screener

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "assets" / "models"
DATA = REPO / "tests" / "data"
#: Real chest X-rays: TB-positive and normal (NLM), Kermany normal and pneumonia (children).
FILES = sorted(
    p
    for sub in ("tb/normal", "tb/tuberculosis", "pneumonia/normal", "pneumonia/pneumonia")
    for p in (DATA / sub).iterdir()
    if p.is_file()
)[:8]


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _inputs(spec) -> np.ndarray:
    screener = Screener(load_model_set([MODELS], Device.CPU))
    prepared = [screener.prepare(decode_working(f, *read_file(f))) for f in FILES]
    return np.stack([np.repeat(p.planes[spec][..., None], spec.channels, -1) for p in prepared])


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
    x = _inputs(tb.preprocessing)
    for start, size in ((0, 1), (1, 2), (3, 5)):
        batch = x[start : start + size]
        names = [n for m in merged.outputs for n in m.values()]
        together = dict(zip(names, joint.run(names, {"image": batch}), strict=True))
        for session, outputs, mapping in zip(alone, wanted, merged.outputs, strict=True):
            for name, value in zip(outputs, session.run(outputs, {"image": batch}), strict=True):
                assert np.array_equal(value, together[mapping[name]]), name
    # Real scores, not zeros: the TB-positive fixtures score above the normals.
    scores = alone[0].run(["probabilities"], {"image": x})[0][:, 1]
    assert scores.std() > 0.05


def test_screener_results_are_the_same_with_and_without_the_joint_session(monkeypatch):
    models = load_model_set([MODELS], Device.CPU)
    joint = Screener(models)
    assert [ids for ids, _, _ in joint._joints] == [("tb", "agegroup")]
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
    assert open_joint(manifests, wanted, sessions, probe) is not None
    # The probe's comparison really compares: the sessions swapped give other scores.
    with caplog.at_level(logging.WARNING, logger="desktop.engine.joint"):
        assert open_joint(manifests, wanted, sessions[::-1], probe) is None
    assert "differs" in caplog.text
    # A model file that no longer matches its manifest is not read into a joint session.
    changed = [replace(tb.manifest, sha256="0" * 64), group.manifest]
    assert open_joint(changed, wanted, sessions, probe) is None
