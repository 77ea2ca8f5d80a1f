"""The frozen-backbone recipe's parts: feature cache, scan augmentation, linear head, rates.

No TensorFlow: the backbone is replaced by a one-node ONNX graph (global average pooling), so
what is checked is the plumbing that the 2.x TB and pneumonia figures rest on: view 0 of an
image is exactly the engine's input (``prepare_file``), augmented views are reproducible from
the seed, the cache returns what was computed, and the fitted head becomes a Dense(2) softmax
layer with the same probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from desktop.engine.preprocess import load_working, prepare_file, preprocess  # noqa: E402
from training import features as F  # noqa: E402
from training.augment import FieldOfView, ScanAugment, augment_scan, field_of_view  # noqa: E402
from training.heads import balanced_weights, fit_logistic  # noqa: E402
from training.transfer import rate, target  # noqa: E402

DATA = Path(__file__).parent / "data"
FILES = sorted((DATA / "tb").rglob("*.png"))


def _gap_onnx(path: Path) -> Path:
    """A stand-in backbone: (N, H, W, 3) → mean over H, W, and mean of the square roots of
    the positive part (the two poolings of the real backbone)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["gap"], keepdims=0),
        helper.make_node("Relu", ["image"], ["pos"]),
        helper.make_node("Sqrt", ["pos"], ["root"]),
        helper.make_node("ReduceMean", ["root", "axes"], ["gap_sqrt"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "gap",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, None, None, 3])],
        [
            helper.make_tensor_value_info("gap", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("gap_sqrt", TensorProto.FLOAT, [None, 3]),
        ],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    model = _gap_onnx(tmp_path / "gap.onnx")
    monkeypatch.setattr(F, "onnx_backbone", lambda bb, cache=None: model)
    return tmp_path / "cache"


def test_view_zero_is_the_engine_input_and_views_are_reproducible(stand_in: Path) -> None:
    bb = F.Backbone("lite0", 96)
    spec = bb.spec(contrast="window")
    feats = F.extract(FILES[:5], bb, spec, views=3, seed=7, cache=stand_in)
    assert feats.shape == (5, 3, 6)
    inputs = [prepare_file(p, spec) for p in FILES[:5]]
    expected = np.stack([x.mean(axis=(0, 1)) for x in inputs])
    assert np.allclose(F.select(feats, "mean")[:, 0], expected, atol=1e-6)
    roots = np.stack([np.sqrt(np.maximum(x, 0)).mean(axis=(0, 1)) for x in inputs])
    assert np.allclose(F.select(feats, "sqrt")[:, 0], roots, atol=1e-6)
    # augmented views: different from view 0, rebuilt exactly from (seed, index, view)
    assert not np.allclose(feats[:, 1], feats[:, 0], atol=1e-3)
    rng = np.random.default_rng([7, 2, 1])
    x = preprocess(augment_scan(load_working(FILES[2]).pixels, rng, ScanAugment()), spec)
    assert np.allclose(feats[2, 1, :3], x.mean(axis=(0, 1)), atol=1e-6)
    # the cache answers the second call (same numbers) and a new seed is a new key
    cached = list((stand_in / "features").glob("*.npy"))
    assert len(cached) == 3
    assert np.array_equal(F.extract(FILES[:5], bb, spec, 3, seed=7, cache=stand_in), feats)
    other = F.extract(FILES[:5], bb, spec, 2, seed=8, cache=stand_in)
    assert np.array_equal(other[:, 0], feats[:, 0]) and not np.allclose(other[:, 1], feats[:, 1])


def test_augmented_scan_stays_a_valid_image() -> None:
    pixels = load_working(FILES[0]).pixels
    for view in range(1, 6):
        out = augment_scan(pixels, np.random.default_rng([0, 0, view]), ScanAugment())
        assert out.dtype == np.float32 and out.ndim == 2
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert min(out.shape) >= 0.75 * min(pixels.shape)


def test_field_of_view_views_pad_or_crop_without_touching_grey(stand_in: Path) -> None:
    """The field-of-view views (pneumonia's framing shortcut): the content fills 0.75-1.0 of
    each side of a padded frame, or a tighter crop of it; grey levels are the scan's own; the
    cached features of views 1.. are asked for without view 0 and rebuilt from the seed."""
    pixels = np.ascontiguousarray(load_working(FILES[0]).pixels[::4, ::4])  # small: fast
    h, w = pixels.shape
    padded = cropped = 0
    for view in range(1, 13):
        out = field_of_view(pixels, np.random.default_rng([3, 0, view]), FieldOfView())
        big = out.shape[0] >= h and out.shape[1] >= w
        # padded or cropped, the scan's own block is in it (or it is a block of the scan)
        small, large = (pixels, out) if big else (out, pixels)
        sh, sw = small.shape
        at = [
            (t, s)
            for t in range(large.shape[0] - sh + 1)
            for s in range(large.shape[1] - sw + 1)
            if np.array_equal(large[t : t + sh, s : s + sw], small)
        ]
        assert at
        if big:
            padded += 1
            assert h / out.shape[0] >= 0.75 - 2e-2 and w / out.shape[1] >= 0.75 - 2e-2
            rest = np.ones(out.shape, dtype=bool)
            rest[at[0][0] : at[0][0] + h, at[0][1] : at[0][1] + w] = False
            assert np.unique(out[rest]).size <= 1  # one dark fill, no other grey
        else:
            cropped += 1
            assert out.shape[0] >= 0.85 * h - 1 and out.shape[1] >= 0.85 * w - 1
    assert padded and cropped
    bb = F.Backbone("lite0", 96)
    spec = bb.spec()
    feats = F.extract(
        FILES[:4], bb, spec, 3, seed=3, aug=FieldOfView(), cache=stand_in, first_view=1
    )
    assert feats.shape == (4, 2, 6)
    assert len(list((stand_in / "features").glob("*.npy"))) == 2  # no view 0 computed
    x = preprocess(
        field_of_view(
            load_working(FILES[1]).pixels, np.random.default_rng([3, 1, 2]), FieldOfView()
        ),
        spec,
    )
    assert np.allclose(feats[1, 1, :3], x.mean(axis=(0, 1)), atol=1e-6)
    site = F.extract(FILES[:4], bb, spec, 3, seed=3, cache=stand_in)  # another kind, other keys
    assert not np.allclose(site[:, 1:], feats, atol=1e-4)


def test_backbone_names_are_checked() -> None:
    assert F.parse_backbone("lite0@320") == F.Backbone("lite0", 320)
    with pytest.raises(ValueError, match="NAME@SIDE"):
        F.parse_backbone("resnet50@224")
    with pytest.raises(ValueError, match="working image"):
        F.Backbone("lite0", 512).spec()  # larger than the engine's working image


def test_linear_head_becomes_an_equivalent_dense_softmax() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)) * rng.uniform(0.1, 5, 12) + rng.normal(size=12)
    y = (x[:, 0] / 3 - x[:, 3] + rng.normal(size=400) > 0).astype(int)
    head = fit_logistic(x, y, l2=0.01)
    z = head.logit(x)
    acc = ((z > 0) == y).mean()
    assert acc > 0.8
    kernel, bias = head.dense_weights()
    logits = x @ kernel.astype(np.float64) + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.allclose(p[:, 1], 1 / (1 + np.exp(-z)), atol=1e-5)
    # stronger L2 shrinks the weights (the solver really optimises the penalised loss)
    assert np.linalg.norm(fit_logistic(x, y, l2=1.0).w) < np.linalg.norm(head.w)


def test_balanced_weights_equalise_class_source_cells() -> None:
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    s = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    w = balanced_weights(y, s)
    totals = {(c, g): w[(y == c) & (s == g)].sum() for c in (0, 1) for g in ("a", "b")}
    assert np.allclose(list(totals.values()), 2.0)


def test_rate_has_wilson_interval_and_targets_say_by_how_much() -> None:
    r = rate(np.zeros(10, dtype=bool))
    assert r["rate"] == 0 and r["ci95"][0] == 0 and r["ci95"][1] == pytest.approx(0.2775, abs=1e-3)
    half = rate(np.array([True, False] * 50))
    assert half["ci95"][0] == pytest.approx(0.4038, abs=1e-3)
    missed = target("AUC ≥ 0.85", 0.8, 0.85, True, "0.800")
    assert not missed["met"] and missed["gap"] == "short by 0.050"
    over = target("≤ 30% flagged", 0.42, 0.30, False, "0.420")
    assert not over["met"] and over["gap"] == "over by 0.120"
    assert target("≤ 30% flagged", 0.2, 0.30, False, "0.200")["met"]


def test_joined_and_mirrored_backbones_are_parsed_and_extracted(stand_in: Path) -> None:
    """A joined backbone's features are its networks' features side by side (mean-pooled of
    each, then sqrt-pooled of each), each computed on that network's own engine input; the
    mirror variant averages them with those of the mirror images (separate cache files)."""
    bb = F.parse_backbone("mobilenet025+lite0@96+mirror")
    assert bb == F.Backbone("mobilenet025+lite0", 96, True) and bb.key.endswith("@96+mirror")
    assert [p.key for p in bb.parts] == ["mobilenet025@96", "lite0@96"]
    for bad in ("lite0+lite0@96", "lite0+resnet@96", "lite0@96+flip", "lite0+mobilenet025"):
        with pytest.raises(ValueError, match="NAME"):
            F.parse_backbone(bad)
    # the in-graph affine that turns the model input into the second network's input
    spec, lite = bb.spec(), bb.parts[1].spec()
    a, b = bb.rescale(bb.parts[1])
    x = np.stack([prepare_file(p, spec) for p in FILES[:3]])
    own = np.stack([prepare_file(p, lite) for p in FILES[:3]])
    np.testing.assert_allclose(x * a + b, own, atol=2e-6)

    plain = F.Backbone(bb.name, 96)
    feats = F.extract(FILES[:3], plain, spec, seed=1, cache=stand_in)
    assert feats.shape == (3, 1, 12)
    mean = np.concatenate([x.mean(axis=(1, 2)), own.mean(axis=(1, 2))], axis=1)
    root = np.concatenate([np.sqrt(np.maximum(v, 0)).mean(axis=(1, 2)) for v in (x, own)], axis=1)
    np.testing.assert_allclose(F.select(feats, "mean")[:, 0], mean, atol=1e-5)
    np.testing.assert_allclose(F.select(feats, "sqrt")[:, 0], root, atol=1e-5)
    assert len(list((stand_in / "features").glob("*.npy"))) == 2  # one per network
    mirrored = F.extract(FILES[:3], bb, spec, seed=1, cache=stand_in)
    assert len(list((stand_in / "features").glob("*.npy"))) == 4  # + the mirror images
    np.testing.assert_allclose(mirrored, feats, atol=1e-6)  # average pooling: mirror-blind


WEIGHTS = Path("/work/shared/data/weights")


@pytest.mark.skipif(
    not (WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5").exists()
    or not (WEIGHTS / "efficientnet_lite0_imagenet_f16.npz").exists(),
    reason="needs the MobileNet 0.25 and EfficientNet-Lite0 ImageNet weights",
)
def test_saved_joined_mirrored_model_computes_the_feature_path(tmp_path: Path) -> None:
    """The Keras model that export converts (joined MobileNet + Lite0, mirror averaging,
    sqrt pooling) gives the features the head was fitted on: each network on its own engine
    input and on that input's mirror image, pooled, averaged; and its logit is the head's."""
    import keras

    from training.data import Record
    from training.heads import LinearHead
    from training.models import heads_model
    from training.transfer import _save_model

    bb = F.parse_backbone("mobilenet025+lite0@96+mirror")
    spec = bb.spec()
    rows = [Record(p, i % 2, str(i), "x", "test") for i, p in enumerate(FILES[:4])]
    d = 256 + 1280
    rng = np.random.default_rng(0)
    head = LinearHead(rng.normal(size=d) / 30, 0.1, rng.uniform(0, 1, d), rng.uniform(1, 2, d))
    _save_model(tmp_path, bb, head, spec, rows, np.zeros(len(rows)), "sqrt")
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    x = np.stack([prepare_file(r.path, spec) for r in rows])
    fmap, gap, logits = (np.asarray(t, dtype=np.float64) for t in heads_model(model)(x))
    want = []
    for part in bb.parts:
        net = F.keras_backbone(part)
        own = np.stack([prepare_file(r.path, part.spec()) for r in rows])
        pooled = [
            np.sqrt(np.maximum(np.asarray(net(v, training=False), np.float64), 0)).mean((1, 2))
            for v in (own, own[:, :, ::-1])
        ]
        want.append((pooled[0] + pooled[1]) / 2)
    np.testing.assert_allclose(gap, np.concatenate(want, axis=1), atol=1e-4)
    np.testing.assert_allclose(fmap.mean(axis=(1, 2)), gap, atol=1e-5)  # CAM stays exact
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], head.logit(gap), atol=1e-3)


def test_l2_by_groups_scores_each_group_with_both_classes() -> None:
    """``--l2-by groups``: each L2 strength is scored by the mean of the per-group validation
    AUCs, so a group's negatives from a source without positives (healthy films of a site the
    model never trains on) count; by source they would be left out."""
    from training import evaluate as ev
    from training.data import Record
    from training.transfer import L2_GRID, _fit_head

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 1, 6))
    y = (x[:, 0, 0] + rng.normal(size=200) > 0).astype(int)
    s = np.array(["a", "b"] * 100)
    xv = rng.normal(size=(120, 6))
    yv = np.r_[(xv[:80, 0] > 0).astype(int), np.zeros(40, dtype=int)]  # last 40: site c, healthy
    xv[80:, 1] += 2.0  # the unseen site's shift
    src = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    val = [
        Record(Path(f"{i}.png"), int(t), str(i), k)
        for i, (t, k) in enumerate(zip(yv, src, strict=True))
    ]
    groups = np.array(["child"] * 40 + ["adult"] * 80)
    head, l2, table = _fit_head(x, y, s, xv, yv, val, val_groups=groups)
    _, _, by_source = _fit_head(x, y, s, xv, yv, val)
    assert set(table) == {f"{v:g}" for v in L2_GRID} and table[f"{l2:g}"] == max(table.values())
    z = head.logit(xv)
    want = np.mean([ev.roc_auc(yv[groups == g], z[groups == g]) for g in ("adult", "child")])
    assert table[f"{l2:g}"] == pytest.approx(want)
    a = groups == "adult"
    assert by_source[f"{l2:g}"] != pytest.approx(want)  # site c's films change the adult AUC
    assert ev.roc_auc(yv[a], z[a]) != pytest.approx(ev.roc_auc(yv[40:80], z[40:80]))


def test_external_figures_is_the_one_summary_of_external_sets() -> None:
    """Frozen, ensemble and fine-tuned recipes share it; only how logits are made differs."""
    from types import SimpleNamespace

    from training.transfer import external_figures

    task = SimpleNamespace(
        external={"nih_no_finding": (["a", "b", "c"], "healthy")}, healthy_test=None
    )
    points = {"screening": {"threshold": 0.5}, "balanced": {"threshold": 0.7}}
    external, scores, healthy = external_figures(
        task, [], np.zeros(0), points, 1.0, lambda rows: np.array([-1.0, 0.5, 2.0])[: len(rows)]
    )
    np.testing.assert_allclose(scores["nih_no_finding"], [0.268941, 0.622459, 0.880797], atol=1e-6)
    figures = external["nih_no_finding"]
    assert figures["n"] == 3 and figures["description"] == "healthy"
    assert figures["flag_rate"]["screening"]["k"] == 2
    assert figures["flag_rate"]["balanced"]["k"] == 1
    assert figures["median_score"] == pytest.approx(0.622459, abs=1e-6)
    assert healthy is None


def test_loso_folds_hold_one_source_out_of_everything_but_its_own_fit() -> None:
    """The one leave-one-source-out set-up of the frozen, ensemble and fine-tuned recipes, on
    the real TB fixture records split as training splits them."""
    from training import data as D
    from training.transfer import loso_folds

    records = D.split_records(D.list_tb(DATA / "tb"), (0.34, 0.33, 0.33))
    train, val, test = ([r for r in records if r.split == s] for s in ("train", "val", "test"))
    every = [*train, *val, *test]
    y_all, folds = loso_folds(train, val, test)
    assert y_all.tolist() == [r.label for r in every]
    assert [f.source for f in folds] == ["montgomery", "shenzhen"]
    assert [f.key for f in folds] == [
        "train montgomery → test shenzhen",
        "train shenzhen → test montgomery",
    ]
    for f in folds:
        fit = [r for r, m in zip(train, f.train, strict=True) if m]
        assert fit and {r.source for r in fit} == {f.source}
        assert f.val_rows == [r for r in val if r.source == f.source]
        tested = [r for r, m in zip(every, f.other, strict=True) if m]
        assert tested == [r for r in every if r.source != f.source]  # all parts of the other
        assert not set(map(id, fit)) & set(map(id, tested))
        assert [r for r, m in zip(every, f.other_val, strict=True) if m] == [
            r for r in val if r.source != f.source
        ]
    assert sum(int(f.train.sum()) for f in folds) == len(train)


def test_loso_fold_figures_calibrate_on_the_source_and_test_on_the_other() -> None:
    from training import data as D
    from training import evaluate as ev
    from training.transfer import loso_fold_figures, loso_folds

    records = D.split_records(D.list_tb(DATA / "tb"), (0.34, 0.33, 0.33))
    train, val, test = ([r for r in records if r.split == s] for s in ("train", "val", "test"))
    y_all, folds = loso_folds(train, val, test)
    f = folds[1]
    # a logit that ranks by the label with one error on each side, so AUC < 1 is checkable
    z = np.where(y_all == 1, 1.0, -1.0)
    z[np.flatnonzero(y_all == 1)[0]] = -2.0
    res, (y_curve, p_curve) = loso_fold_figures(f, y_all, z[f.val], z[f.other], 7, {"l2": 0.1})
    assert list(res)[-3:] == ["l2", "n_train_images", "median_score_positive"]
    assert res["n"] == int(f.other.sum()) and res["n_train_images"] == int(f.train.sum())
    np.testing.assert_array_equal(y_curve, y_all[f.other])
    assert res["auc"] == pytest.approx(ev.roc_auc(y_curve, p_curve))
    assert res["median_score_positive"] == pytest.approx(float(np.median(p_curve[y_curve == 1])))


def test_screening_points_apply_the_tasks_whole_rule() -> None:
    """One definition of the points for every recipe: the task's specificity floor and its
    patient groups' own points (the fine-tuned recipe once applied neither)."""
    from types import SimpleNamespace

    from training import data as D
    from training import evaluate as ev
    from training.evaluate import MIN_SENSITIVITY
    from training.transfer import screening_points

    val = D.list_tb(DATA / "tb")
    y = np.array([r.label for r in val])
    score = np.linspace(0.05, 0.95, len(val))[np.argsort(np.argsort(y + 0.3 * (y == 0)))]
    score[np.flatnonzero(y == 0)[:3]] = 0.99  # three confident false alarms
    group = {r.group: ("a" if i % 2 else "b") for i, r in enumerate(val)}
    plain = SimpleNamespace(min_specificity=None, point_group=None)
    assert screening_points(plain, val, y, score) == ev.operating_points(y, score)
    floor = SimpleNamespace(min_specificity=0.9, point_group=None)
    points = screening_points(floor, val, y, score)
    assert points == ev.operating_points(y, score, MIN_SENSITIVITY, 0.9)
    assert (
        points["screening"]["threshold"] != ev.operating_points(y, score)["screening"]["threshold"]
    )
    grouped = SimpleNamespace(min_specificity=None, point_group=lambda r: group[r.group])
    by_group = screening_points(grouped, val, y, score)["screening"]["by_group"]
    for g in ("a", "b"):
        m = np.array([group[r.group] == g for r in val])
        own = ev.operating_points(y[m], score[m])["screening"]
        assert by_group[g]["threshold"] == own["threshold"] and by_group[g]["n"] == int(m.sum())
