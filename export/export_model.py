"""Export a training run to ONNX with its manifest and model card.

    python -m export.export_model --run runs/tb --out assets/models

What goes into the graph, and why:

- ``probabilities`` (N, K): ``softmax(logits / T)`` — the temperature fitted on validation is
  baked in, so every consumer sees calibrated probabilities without extra code.
- ``activation_map`` (N, h, w) for finding models: the exact class activation map of the
  positive class, ``feature_maps · W[:, positive]`` (the head is GAP + Dense, so this is the
  linear contribution of each location to the positive logit, before averaging).
- ``ood_score`` (N,) for the modality model: Mahalanobis distance of the GAP features to the
  nearest class mean (shared covariance), constants baked in; high = not like any training
  image.

The input is ``image`` NHWC float32 with a dynamic batch dimension. After conversion the
model is checked (``onnx.checker``), run with ONNX Runtime on real images and compared with
the Keras model (max abs difference reported and required ≤ 1e-5 on probabilities), and the
manifest is validated with the engine's own reader before anything is written to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.manifest import ModelManifest, load_verified_model, read_manifest
from desktop.engine.preprocess import PreprocessSpec

log = logging.getLogger("export.export_model")

OPSET = 17
STD_PENALTY = np.float32(1000.0)  # == training.ood.STD_PENALTY (checked in export_run)
PARITY_TOL = 1e-5
VERSION = "1.0.0"


def build_function(model: Any, info: dict[str, Any], ood: dict[str, np.ndarray] | None):  # noqa: ANN201
    """The tf.function that becomes the ONNX graph (named input, dict of named outputs)."""
    import tensorflow as tf

    from training.models import heads_model

    spec = PreprocessSpec.from_manifest(info["preprocessing"])
    heads = heads_model(model)
    # constants are NumPy here and become tf.constant inside the traced function: tensors
    # captured from outside would turn into extra graph inputs in tf2onnx
    temperature = np.float32(info["temperature"])
    kernel = np.asarray(model.get_layer("logits").kernel, dtype=np.float32)
    pos = info["labels"].index(info["positive_label"]) if info.get("positive_label") else None
    w_pos = np.ascontiguousarray(kernel[:, pos]) if pos is not None else None
    if ood is not None:
        chol_np = ood["chol"].astype(np.float32)
        means_np = (ood["means"] @ ood["chol"]).astype(np.float32)
        floor = float(ood["std_floor"]) if "std_floor" in ood else None
        scale_np = ood["scale"].astype(np.float32) if "scale" in ood else None
    signature = [tf.TensorSpec([None, *spec.input_shape], tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def serve(image):  # noqa: ANN001
        fmap, gap, logits = heads(image, training=False)
        out = {"probabilities": tf.nn.softmax(logits / tf.constant(temperature), axis=-1)}
        if w_pos is not None:
            out["activation_map"] = tf.tensordot(fmap, tf.constant(w_pos), axes=[[3], [0]])
        if ood is not None:
            z = tf.matmul(gap, tf.constant(chol_np))
            means_t = tf.constant(means_np)
            d2 = tf.reduce_sum(tf.square(z[:, None, :] - means_t[None, :, :]), axis=-1)
            if scale_np is not None:  # per-component radius units (training.ood)
                score = tf.reduce_min(tf.sqrt(d2) * tf.constant(scale_np)[None, :], axis=-1)
            else:
                score = tf.sqrt(tf.reduce_min(d2, axis=-1))
            if floor is not None:  # structure penalty (training.ood.structure_penalty)
                mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
                std = tf.sqrt(tf.reduce_mean(tf.square(image - mean), axis=[1, 2, 3]))
                score += STD_PENALTY * tf.nn.relu(1.0 - std / np.float32(floor))
            out["ood_score"] = score
        return out

    return serve, signature


def reference_outputs(
    model: Any, info: dict[str, Any], ood: dict[str, np.ndarray] | None, x: np.ndarray
) -> dict[str, np.ndarray]:
    """What the Keras model says, computed outside the exported graph (NumPy float64 maths)."""
    from training.evaluate import softmax
    from training.models import heads_model

    fmap, gap, logits = (np.asarray(t, dtype=np.float64) for t in heads_model(model)(x))
    out = {"probabilities": softmax(logits, float(info["temperature"]))}
    if info.get("positive_label"):
        kernel = np.asarray(model.get_layer("logits").kernel, dtype=np.float64)
        out["activation_map"] = fmap @ kernel[:, info["labels"].index(info["positive_label"])]
    if ood is not None:
        from training.ood import ood_score

        out["ood_score"] = ood_score(gap, x, ood)
    return out


def convert(serve: Any, signature: list[Any], path: Path) -> list[str]:
    """tf2onnx with a fixed opset; returns the ONNX output names (renamed to the dict keys)."""
    import onnx
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    concrete = serve.get_concrete_function()
    keys = sorted(concrete.structured_outputs)  # tf flattens dicts in sorted-key order
    graph = model_proto.graph
    if len(graph.output) != len(keys):
        raise RuntimeError(f"expected {len(keys)} outputs, got {len(graph.output)}")
    for out, key in zip(graph.output, keys, strict=True):
        if out.name != key:
            old = out.name
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == old:
                        node.output[i] = key
                for i, name in enumerate(node.input):
                    if name == old:
                        node.input[i] = key
            out.name = key
    if [i.name for i in graph.input] != ["image"]:
        raise RuntimeError(f"unexpected ONNX inputs {[i.name for i in graph.input]}")
    for value in [*graph.input, *graph.output]:  # name the dynamic batch dimension
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    model_proto.producer_name = "medscreen-export"
    onnx.checker.check_model(model_proto, full_check=True)
    path.write_bytes(model_proto.SerializeToString())
    return keys


def onnx_run(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x}), strict=True))


def parity(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs difference per output (activation maps also relative to their range)."""
    out = {}
    for key, value in ref.items():
        diff = float(np.max(np.abs(got[key].astype(np.float64) - value)))
        out[key] = diff
        if key != "probabilities":
            scale = float(np.max(np.abs(value))) or 1.0
            out[f"{key}_relative"] = diff / scale
    return out


def build_manifest(
    info: dict[str, Any], onnx_bytes: bytes, parity_figures: dict[str, Any], run: Path
) -> dict[str, Any]:
    spec = PreprocessSpec.from_manifest(info["preprocessing"])
    outputs = {"probabilities": "probabilities"}
    if info.get("positive_label"):
        outputs["activation_map"] = "activation_map"
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "id": info["id"],
        "version": info.get("version", VERSION),  # a run re-evaluated later carries its own
        "name": info["name"],
        "role": info["role"],
        "task": info["task"],
        "labels": info["labels"],
        "positive_label": info.get("positive_label"),
        "file": f"{info['id']}.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "input": {
            "name": "image",
            "shape": [None, *spec.input_shape],
            "layout": "NHWC",
            "dtype": "float32",
        },
        "preprocessing": spec.to_manifest(),
        "outputs": outputs,
        "operating_points": info.get("operating_points", {}),
        "default_operating_point": info.get(
            "default_operating_point", "screening" if info.get("operating_points") else None
        ),
        "metrics": _prune(info["metrics"]),
        "calibration": info.get("calibration")
        or {
            "method": "temperature",
            "temperature": info["temperature"],
            "fitted_on": "validation split (NLL)",
            "baked_into_graph": True,
        },
        "training": info["training"],
        "export": {
            "tool": "tf2onnx",
            "opset": OPSET,
            "parity": parity_figures,
        },
        "intended_use": info["intended_use"],
        "card": f"{info['id']}.md",
    }
    if info.get("gate"):
        manifest["gate"] = info["gate"]
    if info.get("ood"):
        manifest["ood"] = info["ood"]
    if info.get("patient_group"):  # how a patient-group model's score becomes a group
        manifest["patient_group"] = info["patient_group"]
    # transfer-recipe finding models (training.transfer): who the model is for, what it must
    # not be used for, its targets and how its operating points were chosen (card material);
    # "display" (short column name, column order) when the run gives one
    keys = ("scope", "display", "not_for", "targets", "operating_rule", "limitations")
    for key in (*keys, "comparison"):
        if key in info:
            manifest[key] = info[key]
    return manifest


def _prune(metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's metrics as JSON values; a figure that is not a number (the AUC of a
    one-class subset, e.g. a source of healthy films only) becomes null, as JSON requires."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return clean(json.loads(json.dumps(metrics, default=float)))


def export_run(
    run: Path, out: Path, parity_images: np.ndarray | None = None, card: bool = True
) -> dict[str, Any]:
    """Export ``run`` into ``out``; returns the manifest written. Raises if parity fails."""
    import keras

    import training.models  # noqa: F401  (registers custom layers such as Sqrt)

    info = json.loads((run / "run.json").read_text())
    model = keras.models.load_model(run / "model.keras", compile=False)
    ood = dict(np.load(run / "ood.npz")) if (run / "ood.npz").exists() else None
    x = parity_images if parity_images is not None else _parity_inputs(run, info)
    from training.ood import STD_PENALTY as TRAINING_PENALTY

    assert float(STD_PENALTY) == TRAINING_PENALTY
    serve, signature = build_function(model, info, ood)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / f"{info['id']}.onnx"
        convert(serve, signature, onnx_path)
        data = onnx_path.read_bytes()
        got = onnx_run(data, x)
        ref = reference_outputs(model, info, ood, x)
        # a single image too: the batch dimension really is dynamic
        single = onnx_run(data, x[:1])
        figures = parity(ref, got)
        figures["single_vs_batch_probabilities"] = float(
            np.max(np.abs(single["probabilities"] - got["probabilities"][:1]))
        )
        figures["n_images"] = len(x)
        if (run / "parity_scores.npy").exists() and parity_images is None:
            # the run's figures came from cached ONNX-backbone features + the head: the
            # exported graph must give the same scores on the same images
            saved = np.load(run / "parity_scores.npy")
            pos = info["labels"].index(info["positive_label"])
            figures["run_scores"] = float(np.max(np.abs(got["probabilities"][:, pos] - saved)))
            if figures["run_scores"] > 1e-4:
                raise RuntimeError(
                    f"exported scores differ from the run's by {figures['run_scores']:.2e}"
                )
        figures["images"] = "real held-out test images of this model's data"
        log.info("parity %s", figures)
        if figures["probabilities"] > PARITY_TOL:
            raise RuntimeError(f"Keras/ONNX parity {figures['probabilities']:.2e} > {PARITY_TOL}")
        manifest = build_manifest(info, data, figures, run)
        previous = out / f"{info['id']}.json"
        if "display" not in manifest and previous.exists():
            # the display block (column label, order) is set on the shipped manifest, not by
            # training: a re-export keeps it
            shown = json.loads(previous.read_text()).get("display")
            if shown:
                manifest["display"] = shown
        ModelManifest.from_dict(manifest)  # validate before writing
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, out / manifest["file"])
        mpath = out / f"{info['id']}.json"
        mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    checked = read_manifest(mpath)
    load_verified_model(checked)
    if card:
        from export.model_card import write_card

        write_card(manifest, run, out)
    print(f"exported {info['id']} to {out}: parity {figures}")
    return manifest


def _parity_inputs(run: Path, info: dict[str, Any], n: int = 16) -> np.ndarray:
    """Real held-out images for the parity check: saved by training, or rebuilt from the
    run's split.csv and data folder with the engine's preprocessing."""
    saved = run / "parity_inputs.npy"
    if saved.exists():
        return np.load(saved)
    import csv

    from desktop.engine.preprocess import prepare_file

    root = Path(info["training"]["data_path"])
    index = {p.name: p for p in root.rglob("*") if p.is_file()}
    with (run / "split.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    rows = rows[: n // 2] + rows[-(n // 2) :]
    spec = PreprocessSpec.from_manifest(info["preprocessing"])
    return np.stack([prepare_file(index[r["file"]], spec) for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="training run folder")
    p.add_argument("--out", type=Path, default=Path("assets/models"))
    p.add_argument("--no-card", action="store_true")
    p.add_argument(
        "--card-only",
        action="store_true",
        help="only rewrite the model card of the already exported model (e.g. after new "
        "comparison runs); the .onnx and manifest are left untouched",
    )
    p.add_argument(
        "--sign-key",
        type=Path,
        metavar="PATH",
        help="sign the exported package with this Ed25519 key (kept outside the repository) "
        "and re-pin the bundled models; without it, run python -m export.sign afterwards",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.card_only:
        from export.model_card import write_card

        info = json.loads((args.run / "run.json").read_text())
        manifest = read_manifest(args.out / f"{info['id']}.json")
        load_verified_model(manifest)
        print(write_card(manifest.raw, args.run, args.out))
        return 0
    manifest = export_run(args.run, args.out, card=not args.no_card)
    mpath = args.out / f"{manifest['id']}.json"
    if args.sign_key:
        from export import sign

        return sign.main(["--key", str(args.sign_key), str(mpath)])
    # The app refuses an unsigned package (desktop/engine/trust.py): sign before shipping.
    print(f"not signed yet: python -m export.sign --key PATH {args.out}/*.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
