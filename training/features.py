"""Frozen-backbone features, computed once and cached: what makes model comparison affordable.

Why: on 2 shared CPU cores a full fine-tune of EfficientNet at 320² takes hours per run, and the
issue asks for backbone × input size × recipe comparisons, leave-one-source-out runs and
external sets. A frozen ImageNet backbone turns every image (and every augmented view of it)
into one 1280-number vector once; heads are then fitted in seconds.

- Inputs come from the engine: view 0 of an image is exactly ``prepare_file(path, spec)``;
  views 1.. are :func:`training.augment.augment_scan` of the engine's working image followed
  by the engine's ``preprocess`` (so the contrast normalisation of the spec runs after the
  simulated site shift, as it will in the app).
- The backbone runs in ONNX Runtime (converted once with tf2onnx from the Keras port and
  cached): about 7x faster than TensorFlow on these cores, and numerically the same network
  (max abs difference ~1e-5 on the features, checked at conversion).
- Each (files, spec, backbone, view, augmentation, seed, engine code) gets one ``.npy`` in
  the cache folder (default ``$MEDSCREEN_TRAIN_CACHE`` or ``/tmp/medscreen/cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from desktop.engine.preprocess import PreprocessSpec, load_working, prepare_file, preprocess
from training.augment import FieldOfView, ScanAugment, make_view
from training.data import default_cache_dir

log = logging.getLogger(__name__)

MOBILENET_WEIGHTS = "mobilenet_2_5_224_tf_no_top.h5"


NAMES = ("lite0", "lite1", "lite2", "mobilenet025")


@dataclass(frozen=True)
class Backbone:
    """A frozen ImageNet backbone at one input side, or several joined by ``+``.

    A joined backbone (``mobilenet025+lite0@320``) runs each network on the same image and
    concatenates their last feature maps along the channels (the sides must give maps of
    one size: every backbone here has stride 32). One GAP + Dense head on the joined maps is
    an ensemble of linear heads whose class activation map stays exact. The model input is
    scaled for the first network; the others get an in-graph affine rescale to their own
    ImageNet scaling (:meth:`rescale`).
    """

    name: str  # "lite0" | "lite1" | "lite2" | "mobilenet025", or several joined by "+"
    side: int
    # test-time augmentation: the features averaged with those of the left-right mirror image
    mirror: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}@{self.side}" + ("+mirror" if self.mirror else "")

    @property
    def parts(self) -> list[Backbone]:
        """The single backbones of a joined one (itself when single)."""
        return [Backbone(n, self.side) for n in self.name.split("+")]

    def spec(self, **extra: object) -> PreprocessSpec:
        """The engine preprocessing this backbone expects (ImageNet input scaling; a joined
        backbone: its first network's)."""
        from training.efficientnet_lite import INPUT_OFFSET, INPUT_SCALE

        first = self.name.split("+")[0]
        if first == "mobilenet025":
            scale, offset = 2.0, -1.0  # Keras MobileNet: [-1, 1]
        else:
            scale, offset = INPUT_SCALE, INPUT_OFFSET
        return PreprocessSpec(
            self.side,
            self.side,
            3,
            "stretch",
            "area",
            scale,
            offset,
            **extra,  # type: ignore[arg-type]
        )

    def rescale(self, part: Backbone) -> tuple[float, float]:
        """``(a, b)`` with ``part``'s input = a · this backbone's input + b (same grey)."""
        mine, theirs = self.spec(), part.spec()
        a = theirs.scale / mine.scale
        return a, theirs.offset - a * mine.offset

    def describe(self) -> str:
        if self.mirror:
            return (
                Backbone(self.name, self.side).describe()
                + ", features averaged with those of the left-right mirror image inside the "
                "graph (test-time augmentation)"
            )
        if "+" in self.name:
            names = " + ".join(p.describe().split(" (ImageNet)")[0] for p in self.parts)
            return (
                f"{names} (ImageNet) at {self.side}x{self.side}, feature maps concatenated "
                "(one GAP + linear head: an ensemble)"
            )
        if self.name == "mobilenet025":
            return f"MobileNet v1 alpha 0.25 (ImageNet) at {self.side}x{self.side}"
        return f"EfficientNet-{self.name.capitalize()} (ImageNet) at {self.side}x{self.side}"


def parse_backbone(text: str) -> Backbone:
    """``lite0@320`` → Backbone("lite0", 320); ``mobilenet025+lite0@320`` joins two;
    a ``+mirror`` suffix adds the mirror-image test-time augmentation."""
    name, _, rest = text.partition("@")
    side, _, tta = rest.partition("+")
    names = name.split("+")
    if (
        not all(n in NAMES for n in names)
        or len(set(names)) != len(names)
        or not side.isdigit()
        or tta not in ("", "mirror")
    ):
        raise ValueError(
            f"backbone {text!r}: expected NAME@SIDE, NAME lite0/1/2 or mobilenet025 "
            "(NAME+NAME@SIDE joins two; a +mirror suffix averages with the mirror image)"
        )
    return Backbone(name, int(side), tta == "mirror")


def keras_backbone(bb: Backbone, weights_dir: Path | None = None):  # noqa: ANN201
    """Keras Functional model: image → last feature maps (ImageNet weights loaded)."""
    import keras

    from training.efficientnet_lite import DEFAULT_WEIGHTS_DIR, pretrained_lite

    shape = (bb.side, bb.side, 3)
    if bb.mirror:  # the mirror image is taken in the head (training.transfer._save_model)
        return keras_backbone(Backbone(bb.name, bb.side), weights_dir)
    if "+" in bb.name:
        inputs = keras.Input(shape=shape, name="image")
        maps = []
        for part in bb.parts:
            a, b = bb.rescale(part)
            x = inputs
            if (a, b) != (1.0, 0.0):
                x = keras.layers.Rescaling(a, b, name=f"to_{part.name}_input")(inputs)
            maps.append(keras_backbone(part, weights_dir)(x))
        joined = keras.layers.Concatenate(name="joined_maps")(maps)
        return keras.Model(inputs, joined, name=bb.name.replace("+", "_"))
    if bb.name == "mobilenet025":
        net = keras.applications.MobileNet(
            alpha=0.25, include_top=False, weights=None, input_shape=shape
        )
        net.load_weights(str((weights_dir or DEFAULT_WEIGHTS_DIR) / MOBILENET_WEIGHTS))
        return net
    return pretrained_lite(bb.name, shape, weights_dir=weights_dir)


def onnx_backbone(bb: Backbone, cache: Path | None = None) -> Path:
    """The backbone + both poolings as an ONNX file (converted once, cached).

    Outputs ``gap`` (mean of the feature maps) and ``gap_sqrt`` (mean of their square
    roots): one pass gives the features of both pooling choices (:data:`POOLS`).
    """
    cache = cache or default_cache_dir()
    path = cache / f"backbone_{bb.name}_{bb.side}_v2.onnx"
    if path.exists():
        return path
    import keras
    import tensorflow as tf
    import tf2onnx

    from training.models import Sqrt

    net = keras_backbone(bb)
    pool = keras.layers.GlobalAveragePooling2D()
    gap = keras.Model(net.input, [pool(net.output), pool(Sqrt()(net.output))])
    sig = [tf.TensorSpec([None, bb.side, bb.side, 3], tf.float32, name="image")]

    @tf.function(input_signature=sig)
    def serve(image):  # noqa: ANN001
        mean, root = gap(image, training=False)
        return {"gap": mean, "gap_sqrt": root}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=sig, opset=17)
    x = np.random.default_rng(0).uniform(-1, 1, (2, bb.side, bb.side, 3)).astype(np.float32)
    ref = np.concatenate([np.asarray(t) for t in gap(x, training=False)], axis=1)
    got = _run(_session(proto.SerializeToString()), x)
    diff = float(np.abs(ref - got).max())
    if diff > 1e-3:
        raise RuntimeError(f"{bb.key}: ONNX backbone differs from Keras by {diff}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(path)
    log.info("%s: ONNX backbone cached (Keras parity %.1e)", bb.key, diff)
    return path


def _session(model: bytes | str, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


POOLS = ("mean", "sqrt")


def _run(sess, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """(N, 2D): mean-pooled then sqrt-pooled features, whatever the output order."""
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {"image": x}), strict=True))
    mean = next(v for k, v in out.items() if "sqrt" not in k)
    root = next(v for k, v in out.items() if "sqrt" in k)
    return np.concatenate([mean, root], axis=1)


def select(features: np.ndarray, pool: str) -> np.ndarray:
    """The half of :func:`extract`'s output that belongs to ``pool`` ("mean" or "sqrt")."""
    d = features.shape[-1] // 2
    if pool == "mean":
        return features[..., :d]
    if pool == "sqrt":
        return features[..., d:]
    raise ValueError(f"unknown pooling {pool!r}: {POOLS}")


def _engine_fingerprint(paths: Sequence[Path], spec: PreprocessSpec) -> str:
    """Hash of the engine's actual inputs for a few of the files.

    Why not a hash of the engine's source (as ``training.data`` does for its arrays): the
    loader and preprocessing files are edited for unrelated reasons (refactors, speed), and a
    source hash would throw away hours of features each time. Hashing what ``prepare_file``
    returns for the first, middle and last files catches every change that matters: if the
    engine computes different inputs, the key changes and the features are recomputed.
    """
    digest = hashlib.sha256()
    picks = sorted({0, len(paths) // 2, len(paths) - 1}) if paths else []
    for i in picks:
        digest.update(prepare_file(paths[i], spec).tobytes())
    return digest.hexdigest()[:16]


def _key(paths: Sequence[Path], spec: PreprocessSpec, bb: Backbone, view: int, extra: dict) -> str:
    src = json.dumps(
        {
            "files": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths],
            "spec": spec.to_manifest(),
            "backbone": bb.key,
            "view": view,
            "pools": list(POOLS),
            "engine": _engine_fingerprint(paths, spec),
            **extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(src.encode()).hexdigest()[:24]


def extract(
    paths: Sequence[Path],
    bb: Backbone,
    spec: PreprocessSpec,
    views: int = 1,
    *,
    seed: int = 0,
    aug: ScanAugment | FieldOfView | None = None,
    cache: Path | None = None,
    batch: int = 32,
    mirror: bool = False,
    first_view: int = 0,
) -> np.ndarray:
    """Features (N, views, 2D): view 0 un-augmented, views 1.. augmented (``aug``: simulated
    other-site scans, or field-of-view versions); the last axis holds the mean-pooled then the
    sqrt-pooled features (:func:`select`). ``mirror``: of the left-right mirror images of those
    inputs. ``first_view``: only views ``first_view..views-1`` (e.g. 1: a second kind of
    augmented view beside another kind's, without the un-augmented view twice)."""
    cache = cache or default_cache_dir()
    aug = aug or ScanAugment()
    if bb.mirror:  # what the exported graph computes: the mean of both images' features
        plain = Backbone(bb.name, bb.side)
        kw = {"seed": seed, "aug": aug, "cache": cache, "batch": batch, "first_view": first_view}
        both = (
            extract(paths, plain, spec, views, **kw),
            extract(paths, plain, spec, views, mirror=True, **kw),
        )
        return (both[0] + both[1]) / 2
    if "+" in bb.name:  # each network on its own scaling of the same grey, then joined
        got = [
            extract(
                paths,
                part,
                replace(spec, scale=part.spec().scale, offset=part.spec().offset),
                views,
                seed=seed,
                aug=aug,
                cache=cache,
                batch=batch,
                mirror=mirror,
                first_view=first_view,
            )
            for part in bb.parts
        ]
        return np.concatenate([select(f, pool) for pool in POOLS for f in got], axis=-1)
    extra = {"aug": aug.to_json(), "seed": seed, **({"mirror": True} if mirror else {})}
    wanted = range(first_view, views)
    files = {v: cache / "features" / f"{_key(paths, spec, bb, v, extra)}.npy" for v in wanted}
    todo = [v for v in wanted if not files[v].exists()]
    if todo:
        sess = _session(str(onnx_backbone(bb, cache)))
        out = {v: [] for v in todo}
        buf: dict[int, list[np.ndarray]] = {v: [] for v in todo}
        started = time.time()

        def flush(v: int) -> None:
            if buf[v]:
                out[v].append(_run(sess, np.stack(buf[v])))
                buf[v] = []

        for i, path in enumerate(paths):
            working = None
            for v in todo:
                if v == 0:
                    x = prepare_file(path, spec)
                else:
                    if working is None:
                        working = load_working(path).pixels
                    rng = np.random.default_rng([seed, i, v])
                    x = preprocess(make_view(working, rng, aug), spec)
                buf[v].append(x[:, ::-1] if mirror else x)
                if len(buf[v]) == batch:
                    flush(v)
            if i and i % 500 == 0:
                log.info("%s: %d/%d images (%.0f s)", bb.key, i, len(paths), time.time() - started)
        for v in todo:
            flush(v)
            arr = np.concatenate(out[v]).astype(np.float32)
            files[v].parent.mkdir(parents=True, exist_ok=True)
            tmp = files[v].with_suffix(".tmp.npy")
            np.save(tmp, arr)
            tmp.replace(files[v])
        log.info(
            "%s: %d images x %d views in %.0f s",
            bb.key,
            len(paths),
            len(todo),
            time.time() - started,
        )
    return np.stack([np.load(files[v]) for v in wanted], axis=1)
