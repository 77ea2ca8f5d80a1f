"""Small but real ONNX models, built with ``onnx.helper``, for testing the engine's plumbing.

They are not screening models: each computes a simple, documented function of the image so
tests can predict its outputs exactly. The modality stand-in calls bright images (mean grey
above ``cut``) chest X-rays and dark ones head CTs; the finding stand-ins return
``sigmoid(gain * (mean - centre))`` as the positive probability and a 7×7 average-pooled copy
of the image as the activation map. Manifests are complete and carry the real sha256, and
each package is signed (``<id>.sig``) with :data:`TEST_KEY`, a throw-away Ed25519 key made
fresh in every test process, so the registry verifies them like shipped models. Building a
package trusts that key in the current process for the current test only (:func:`trust_test_key`;
tests/conftest.py restores the shipped keys after every test); the app's own
key list in ``desktop/engine/trust.py`` never contains it, and a subprocess does not trust it
(give it ``MEDSCREEN_ALLOW_UNSIGNED_MODELS=1`` or call :func:`trust_test_key` there with the
same key).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from desktop.engine import trust
from desktop.engine.preprocess import PreprocessSpec

MODALITY_LABELS = ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]

#: The throw-away signing key of this test process (never written to disk).
TEST_KEY = Ed25519PrivateKey.generate()
TEST_KEY_NAME = "throw-away test key"


def trust_test_key(key: Ed25519PrivateKey = TEST_KEY, name: str = TEST_KEY_NAME) -> None:
    """Add ``key``'s public half to the app's trusted keys, in this process only."""
    trust.TRUSTED_KEYS[name] = trust.public_raw(key).hex()


def sign(manifest_path: Path, key: Ed25519PrivateKey = TEST_KEY) -> Path:
    """Write the detached signature of the manifest at ``manifest_path`` as the app expects."""
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    sig = trust.signature_path(manifest_path)
    sig.write_text(json.dumps(trust.signature_document(data, key)), encoding="utf-8")
    return sig


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _mean_graph(spec: PreprocessSpec) -> list[onnx.NodeProto]:
    """image (N,H,W,C) → 'mean' (N,1): mean grey in [0, 1] (undoing scale/offset)."""
    return [
        helper.make_node("ReduceMean", ["image", "axes_hwc"], ["raw_mean"], keepdims=0),
        helper.make_node("Sub", ["raw_mean", "offset"], ["shifted"]),
        helper.make_node("Div", ["shifted", "scale"], ["mean_flat"]),
        helper.make_node("Unsqueeze", ["mean_flat", "axis1"], ["mean"]),
    ]


def _common_inits(spec: PreprocessSpec) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes_hwc"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        _const("offset", np.array(spec.offset)),
        _const("scale", np.array(spec.scale)),
    ]


def _save(model: onnx.ModelProto, folder: Path, manifest: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (folder / manifest["file"]).write_bytes(data)
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    path = folder / f"{manifest['id']}.json"
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    sign(path)
    trust_test_key()
    return path


def _input(spec: PreprocessSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["N", spec.height, spec.width, spec.channels]
    )


def build_modality(folder: Path, cut: float = 0.3, version: str = "0.1.0") -> Path:
    spec = PreprocessSpec(height=64, width=64, channels=1, fit="stretch", resample="area")
    weights = np.zeros((1, 6), dtype=np.float32)
    weights[0, 2], weights[0, 5] = 40.0, -40.0  # CXR up with brightness, HeadCT down
    bias = np.zeros(6, dtype=np.float32)
    bias[2], bias[5] = -40.0 * cut, 40.0 * cut
    nodes = _mean_graph(spec) + [
        helper.make_node("MatMul", ["mean", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        # distance of the mean from mid-grey: a stand-in OOD score (blank images score high)
        helper.make_node("Sub", ["mean_flat", "half"], ["centred"]),
        helper.make_node("Abs", ["centred"], ["ood_score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "modality_stub",
        [_input(spec)],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 6]),
            helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, ["N"]),
        ],
        _common_inits(spec) + [_const("w", weights), _const("b", bias), _const("half", 0.5)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    manifest = {
        "schema_version": 1,
        "id": "modality",
        "version": version,
        "name": "Modality gate (test stand-in)",
        "role": "modality",
        "task": "multiclass",
        "labels": MODALITY_LABELS,
        "positive_label": None,
        "file": "modality.onnx",
        "sha256": "0" * 64,
        "input": {
            "name": "image",
            "shape": [None, 64, 64, 1],
            "layout": "NHWC",
            "dtype": "float32",
        },
        "preprocessing": spec.to_manifest(),
        "outputs": {"probabilities": "probabilities"},
        "gate": {"chest_label": "CXR", "min_probability": 0.5},
        "ood": {"output": "ood_score", "threshold": 0.45, "method": "test stand-in"},
        "operating_points": {},
        "metrics": {},
        "intended_use": "tests only",
    }
    return _save(model, folder, manifest)


def build_finding(
    folder: Path,
    model_id: str,
    positive: str,
    centre: float = 0.5,
    gain: float = 10.0,
    version: str = "0.1.0",
    size: int = 224,
    scope: dict | None = None,
    display: dict | None = None,
    operating_points: dict | None = None,
) -> Path:
    """A finding stand-in; ``scope``/``display``/``operating_points`` go into its manifest
    as given (None: none, and the two usual points)."""
    spec = PreprocessSpec(
        height=size, width=size, channels=3, fit="stretch", resample="area", scale=2.0, offset=-1.0
    )
    pool = size // 7
    nodes = _mean_graph(spec) + [
        helper.make_node("Sub", ["mean", "centre"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["logit"]),
        helper.make_node("Concat", ["zero_col", "logit"], ["logits2"], axis=1),
        helper.make_node("Softmax", ["logits2"], ["probabilities"], axis=1),
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
        helper.make_node("ReduceMean", ["pooled", "axis1"], ["activation_map"], keepdims=0),
    ]
    # zero_col: a (N,1) zero column built from the mean so the batch dimension stays dynamic
    nodes.insert(len(_mean_graph(spec)), helper.make_node("Mul", ["mean", "zero"], ["zero_col"]))
    graph = helper.make_graph(
        nodes,
        f"{model_id}_stub",
        [_input(spec)],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("activation_map", TensorProto.FLOAT, ["N", 7, 7]),
        ],
        _common_inits(spec) + [_const("centre", centre), _const("gain", gain), _const("zero", 0.0)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    manifest = {
        "schema_version": 1,
        "id": model_id,
        "version": version,
        "name": f"{positive} (test stand-in)",
        "role": "finding",
        "task": "binary",
        "labels": ["normal", positive],
        "positive_label": positive,
        "file": f"{model_id}.onnx",
        "sha256": "0" * 64,
        "input": {
            "name": "image",
            "shape": [None, size, size, 3],
            "layout": "NHWC",
            "dtype": "float32",
        },
        "preprocessing": spec.to_manifest(),
        "outputs": {"probabilities": "probabilities", "activation_map": "activation_map"},
        "operating_points": operating_points
        or {
            "screening": {"threshold": 0.3, "sensitivity": 0.92, "specificity": 0.71},
            "balanced": {"threshold": 0.5, "sensitivity": 0.85, "specificity": 0.86},
        },
        "default_operating_point": "screening",
        "metrics": {"test": {"auc": 0.5}},
        "intended_use": "tests only",
    }
    if scope is not None:
        manifest["scope"] = scope
    if display is not None:
        manifest["display"] = display
    return _save(model, folder, manifest)


def build_agegroup(
    folder: Path,
    centre: float = 0.5,
    gain: float = 10.0,
    threshold: float = 0.5,
    version: str = "0.1.0",
    adult_age: int = 18,
) -> Path:
    """A patient-group stand-in (role ``patient_group``, labels adult/child) as the shipped
    ``agegroup`` manifest has them: p(child) = sigmoid(gain * (mean grey - centre)), so a
    test predicts each image's group from its mean (:func:`expected_probability`)."""
    path = build_finding(folder, "agegroup", "child", centre=centre, gain=gain, version=version)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(
        {
            "name": "Patient group (test stand-in)",
            "role": "patient_group",
            "labels": ["adult", "child"],
            "positive_label": "child",
            "operating_points": {"estimate": {"threshold": threshold}},
            "default_operating_point": "estimate",
            "patient_group": {"child_if": "p(child) >= threshold", "adult_age_years": adult_age},
        }
    )
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    sign(path)
    return path


def build_model_set(folder: Path, version: str = "0.1.0") -> Path:
    """The three stand-ins (modality, tb, pneumonia) in one folder; returns the folder."""
    build_modality(folder, version=version)
    # column labels and order come from the manifests, as in the shipped ones
    tb_display = {"short_name": "TB", "order": 1}
    build_finding(folder, "tb", "tuberculosis", centre=0.5, version=version, display=tb_display)
    pneumonia_display = {"short_name": "Pneumonia", "order": 2}
    build_finding(
        folder, "pneumonia", "pneumonia", centre=0.45, version=version, display=pneumonia_display
    )
    return folder


def expected_probability(mean_grey: float, centre: float, gain: float = 10.0) -> float:
    return float(1.0 / (1.0 + np.exp(-gain * (mean_grey - centre))))
