"""Train the modality gate: MedNIST's six classes, with real NLM/Kermany/NIH chest X-rays in CXR.

    tar xzf /work/shared/data/mednist.tar.gz -C /tmp/medscreen
    python -m training.train_modality --data /tmp/medscreen/MedNIST \
        --tb-data /work/shared/data/tb/nlm_299 \
        --pneumonia-data /work/shared/data/pneumonia/kermany224_train \
        --nih-data /work/shared/data/pneumonia/nih_adult_1000 --out runs/modality

Why the extra chest images: MedNIST's CXR class is NIH adult chest X-rays at 64×64; the gate
must also accept the TB (NLM: Shenzhen, Montgomery), pediatric (Kermany) and adult NIH
radiographs at full resolution, from every source (target: ≥ 99.5% of each). Only their
*training* split (the same seeded patient-disjoint split the finding models use) enters
training; their validation split sets the OOD threshold (per source); their test split only
measures acceptance. The OOD check (``training.ood``) is fitted on the training features, with
one component per chest X-ray source.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.preprocess import PreprocessSpec
from training import data as D
from training import evaluate as ev
from training.runs import common_args, limit_per_class, setup_logging

log = logging.getLogger("training.train_modality")

LABELS = list(D.MEDNIST_LABELS)
CXR = LABELS.index("CXR")
SPEC = PreprocessSpec(64, 64, 1, "stretch", "area", 1.0, 0.0)
GATE = {"chest_label": "CXR", "min_probability": 0.5}
VERSION = "2.0.0"
#: Where the chest X-rays come from (MedNIST's CXR class is NIH at 64x64).
CXR_SOURCES = ("mednist", "shenzhen", "montgomery", "kermany", "nih")
COMPONENTS = [n for n in LABELS if n != "CXR"] + [f"CXR/{s}" for s in CXR_SOURCES]
#: Share of every source's validation chest X-rays the OOD threshold must accept.
ACCEPT_TARGET = 0.995
INTENDED_USE = (
    "Gate of the MedScreen pipeline: decides whether an image is a chest radiograph (CXR) "
    "before the TB and pneumonia models see it, and refuses images that look like none of "
    "its training classes (ood_score above threshold). Recognises six modalities only "
    "(abdomen CT, breast MRI, chest X-ray, chest CT, hand X-ray, head CT). It must not be "
    "used to judge image quality, view (PA/AP/lateral) or body part beyond these six "
    "classes, nor as evidence that a refused image is not a chest X-ray: a refusal means "
    "only that the image is unlike the chest X-rays it was trained on."
)
CITATIONS = [
    "MedNIST (CC BY-SA 4.0), assembled by A. Polanco Lozano from TCIA, the RSNA Bone Age "
    "challenge and the NIH Chest X-ray set; 64x64 grey JPEG (90% of the 58,954 images).",
    "Chest X-rays added to CXR (training split only): NLM TB sets, Jaeger S, et al. Quant "
    "Imaging Med Surg 2014;4(6):475-7; Kermany DS, et al. Cell 2018;172(5):1122-31, "
    "doi:10.17632/rscbjbr9sj.2 (CC BY 4.0); NIH ChestX-ray14 (no restrictions on use), Wang "
    "X, et al. CVPR 2017, selection of 1,000 by Ozturk T, et al. Comput Biol Med 2020; we "
    "acknowledge the NIH Clinical Center.",
]


def limitations(metrics: dict[str, Any]) -> list[str]:
    """What the figures cannot show, written into the run record (and from there the manifest
    and the card) by training, from this run's own metrics: the card generator holds no
    sentence about any model."""
    val = metrics.get("gate_acceptance", {}).get("validation", {})
    smallest = min(val.items(), key=lambda kv: kv[1]["n"], default=None)
    small = (
        f" {smallest[0].capitalize()}'s validation split is small ({smallest[1]['n']} images), "
        "so its radius rests on few images."
        if smallest is not None and smallest[1]["n"] < 50
        else ""
    )
    return [
        "Recognises six classes only. Anything else (other body parts, lateral views, "
        "photographs of screens) must be caught by the OOD check, which is a heuristic: it "
        "was measured on the synthetic and photographic images listed below, not on every "
        "kind of image a clinic may hold.",
        f"{SPEC.width}x{SPEC.height} input: it decides the *kind* of image, not its quality.",
        "MedNIST has no patient ids, so slices of one CT volume can sit in both the training "
        "and test splits: the MedNIST accuracy is optimistic for new patients.",
        "CXR training images are NIH (adult; MedNIST's 64x64 copies and the 512x512 NIH "
        "set), NLM TB (adult; Shenzhen, Montgomery) and Kermany (pediatric) frontal films; "
        "lateral views and other chest modalities were not in training. A frontal chest "
        "X-ray from another hospital may sit outside every chest component of the OOD "
        "check and be refused as not recognised: the per-source acceptance below is what "
        "was measured, not a promise for other sites.",
        "The OOD threshold and the per-component radii are set on validation images only "
        "(validation chest X-rays and the validation OOD set); the test OOD set "
        "(scikit-image's photographs and document scans, seed-7 noise and text pages) was "
        "never used to set anything." + small,
        "A frontal chest X-ray is refused when the 64x64 classifier calls it something else "
        "(the table of refused chest X-rays names each one and the check that refused it). "
        "Such a scan needs a person to confirm it and screen it.",
    ]


#: The finding label (0 normal, 1 TB/pneumonia) of each extra chest X-ray, by path: the gate
#: only learns "CXR", but its OOD components may be split by it (``--cxr-components``).
FINDING_LABEL: dict[Path, int] = {}


def _extras(
    records: list[D.Record], split: str, limit: int | None, seed: int, source: str | None = None
) -> list[D.Record]:
    """The ``split`` rows of a finding dataset as CXR records (source kept unless given)."""
    rows = D.by_split(records, split)
    if limit is not None and len(rows) > limit:
        idx = np.random.default_rng(seed).permutation(len(rows))[:limit]
        rows = [rows[i] for i in sorted(idx)]
    FINDING_LABEL.update({r.path: r.label for r in rows})
    return [D.Record(r.path, CXR, r.group, source or r.source, split) for r in rows]


def components_for(mode: str) -> list[str]:
    """The OOD components: the five non-chest classes, then chest X-rays by source
    (``source``) or by source and finding (``source_label``: normal and diseased films of a
    source apart)."""
    if mode == "source":
        return list(COMPONENTS)
    return [n for n in LABELS if n != "CXR"] + [
        c
        for s in CXR_SOURCES
        for c in ((f"CXR/{s}",) if s == "mednist" else (f"CXR/{s}/normal", f"CXR/{s}/finding"))
    ]


def component_sources(records: list[D.Record], mode: str) -> np.ndarray:
    """Each extra chest X-ray's component suffix under ``mode`` (see :func:`components_for`)."""
    if mode == "source":
        return np.array([r.source for r in records])
    return np.array(
        [f"{r.source}/{'finding' if FINDING_LABEL[r.path] else 'normal'}" for r in records]
    )


def component_labels(
    labels: np.ndarray, sources: np.ndarray, components: list[str] | None = None
) -> np.ndarray:
    """Mahalanobis component of each image: its class, except CXR, which is split by source.

    Why: chest X-rays from Shenzhen, Montgomery, Kermany and NIH sit in separate clusters of
    the feature space (other scanners, children vs adults); one CXR mean in the middle of them
    made the far clusters' images look out of distribution (1.0.0 refused 2.2% of Montgomery
    and 0.8% of NIH). ``COMPONENTS`` names the rows of ``ood.npz``'s ``means``.
    """
    names = components or COMPONENTS
    out = np.empty(len(labels), dtype=np.int64)
    for i, (y, s) in enumerate(zip(labels, sources, strict=True)):
        out[i] = names.index(f"CXR/{s}" if y == CXR else LABELS[int(y)])
    return out


def threshold_from_validation(scores: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """The OOD threshold: the smallest that accepts ``ACCEPT_TARGET`` of every chest X-ray
    source's *validation* images (per-source quantile, 'higher' so it is an observed score).

    Why per source: a pooled percentile lets the large sets (MedNIST, Kermany) decide and the
    small one (Montgomery, ~20 validation images) carry all the refusals.
    """
    per = {
        s: float(np.quantile(v, ACCEPT_TARGET, method="higher"))
        for s, v in scores.items()
        if len(v)
    }
    return max(per.values()), per


def _gate_figures(accepted: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
    return {
        str(s): ev.proportion(accepted[sources == s]) for s in CXR_SOURCES if (sources == s).any()
    }


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__ or "", "runs/modality")
    p.add_argument("--tb-data", type=Path, required=True)
    p.add_argument("--pneumonia-data", type=Path, required=True)
    p.add_argument(
        "--nih-data",
        type=Path,
        default=None,
        help="NIH adult chest X-rays (nih_adult_1000 with metadata.csv); default: beside "
        "--pneumonia-data",
    )
    p.add_argument("--kermany-train", type=int, default=900, help="Kermany train images added")
    p.add_argument("--recipe", choices=["cnn", "seed"], default="cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--reuse-model",
        action="store_true",
        help="evaluate the model.keras already in --out instead of training",
    )
    p.add_argument(
        "--finetune-from",
        type=Path,
        default=None,
        help="run folder whose model.keras is trained further (second stage) instead of "
        "training from scratch",
    )
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument(
        "--ood-photos",
        type=Path,
        default=None,
        help="folder of photographs/document scans for the OOD measurement "
        "(default: scikit-image's bundled data folder, if installed)",
    )
    p.add_argument(
        "--cxr-components",
        choices=["source", "source_label"],
        default="source",
        help="OOD components of the chest X-rays: one per source, or per source and finding "
        "(normal / TB or pneumonia films apart)",
    )
    p.add_argument("--version", default=VERSION)
    p.add_argument(
        "--repeat-kermany-finding",
        type=int,
        default=1,
        help="in a --finetune-from stage, show each Kermany pneumonia training film N times",
    )
    args = p.parse_args(argv)
    setup_logging()
    started = time.time()
    from training.fit import AugmentConfig, configure_tf, fit, predict_heads
    from training.models import seed_mednist_cnn, small_cnn
    from training.nih import list_nih

    configure_tf(args.seed)
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    cache = args.cache or D.default_cache_dir()
    nih_root = args.nih_data or args.pneumonia_data.parent / "nih_adult_1000"
    if args.nih_data is None and not (nih_root / "metadata.csv").is_file():
        log.warning("no NIH chest X-rays at %s: trained without them", nih_root)
        nih_root = None

    mednist = D.split_records(
        limit_per_class(D.list_mednist(args.data), args.limit, args.seed),
        args.fractions or (0.8, 0.1, 0.1),
        seed=args.seed,
    )
    # the same seeded splits the finding models use: no TB/Kermany test image is trained on
    finding_fractions = args.fractions or (0.7, 0.15, 0.15)  # as in training.binary
    tb, pn, nih = (
        D.split_records(limit_per_class(rows, args.limit, args.seed), finding_fractions, args.seed)
        for rows in (
            D.list_tb(args.tb_data),
            D.list_pneumonia(args.pneumonia_data),
            list_nih(nih_root) if nih_root is not None else [],
        )
    )
    k_train = args.kermany_train if not args.limit else args.limit
    extras = {
        split: _extras(tb, split, None, args.seed)
        + _extras(pn, split, k_train if split == "train" else None, args.seed, "kermany")
        + _extras(nih, split, None, args.seed)
        for split in D.SPLITS
    }
    all_records = mednist + [r for rows in extras.values() for r in rows]
    D.write_split_csv(all_records, run / "split.csv", LABELS)

    def arrays(rows: list[D.Record]) -> tuple[np.ndarray, np.ndarray]:
        x = D.build_array([r.path for r in rows], SPEC, cache)
        return x, np.array([r.label for r in rows], dtype=np.int64)

    m = {s: arrays(D.by_split(mednist, s)) for s in D.SPLITS}
    e = {s: arrays(extras[s]) for s in D.SPLITS}
    e_src = {s: np.array([r.source for r in extras[s]]) for s in D.SPLITS}
    train = (
        np.concatenate([m["train"][0], e["train"][0]]),
        np.concatenate([m["train"][1], e["train"][1]]),
    )
    val = (np.concatenate([m["val"][0], e["val"][0]]), np.concatenate([m["val"][1], e["val"][1]]))
    cw = D.class_weights(train[1], len(LABELS))
    log.info("train %d, val %d, class weights %s", len(train[1]), len(val[1]), cw)

    if args.recipe == "cnn":
        model = small_cnn(SPEC.input_shape, len(LABELS))
        recipe = (
            "4-block CNN (conv-BN-ReLU 8/16/32/64, middle blocks doubled, max-pool) + GAP + "
            "Dropout 0.2 + Dense softmax, 64x64 grey in [0,1], Adam lr 2e-3 batch 128, early "
            "stopping on validation loss, class weights, augmentation rotation ±7°, shift 5%, "
            "zoom 8%, brightness/contrast, no flip"
        )
        lr, epochs = 2e-3, args.epochs or 5
    else:
        model = seed_mednist_cnn(SPEC.input_shape, len(LABELS))
        recipe = "seed article: 2-conv CNN (16/32, ReLU, max-pool) + GAP + Dense softmax"
        lr, epochs = 1e-3, args.epochs or 5
    if args.finetune_from is not None:
        import shutil

        import keras  # a second stage on a trained run's model (e.g. with more chest X-rays)

        model = keras.models.load_model(args.finetune_from / "model.keras", compile=False)
        stages = sorted(args.finetune_from.glob("history_*.json"))
        for hist in stages:
            if hist.resolve() != (run / hist.name).resolve():
                shutil.copyfile(hist, run / hist.name)  # the earlier stages' curves and epochs
        stage = "finetune"
        earlier = args.finetune_from / "run.json"
        if (args.finetune_from / "history_finetune.json").exists() and earlier.exists():
            # a further stage on a fine-tuned run: its recipe, then this stage's
            recipe = json.loads(earlier.read_text())["training"]["recipe"]
            stage = f"finetune{len(stages)}"
        ft_epochs = args.epochs or 2
        recipe += (
            f"; then fine-tuned for up to {ft_epochs} epochs at lr {args.finetune_lr:g} on the "
            f"same data with {k_train} Kermany training images"
            + (
                f", the pneumonia films among them seen {args.repeat_kermany_finding} times"
                if args.repeat_kermany_finding > 1
                else ""
            )
            + f" (stage '{stage}')"
        )
        if args.repeat_kermany_finding > 1:
            # the chest X-rays the gate refused were Kermany pneumonia films (white-outs that
            # look like chest CT at 64x64): more of them in this stage, nothing new added
            extra = (e_src["train"] == "kermany") & (
                np.array([FINDING_LABEL[r.path] for r in extras["train"]]) == 1
            )
            rep = args.repeat_kermany_finding - 1
            train = (
                np.concatenate([train[0], *[e["train"][0][extra]] * rep]),
                np.concatenate([train[1], *[e["train"][1][extra]] * rep]),
            )
        fit(
            model,
            train,
            val,
            SPEC,
            run,
            epochs=ft_epochs,
            lr=args.finetune_lr,
            batch=args.batch,
            class_weight=cw,
            augment=AugmentConfig(),
            patience=2,
            seed=args.seed + 1,
            stage=stage,
        )
    elif args.reuse_model and (run / "model.keras").exists():
        import keras  # re-evaluate a trained run (e.g. after changing the OOD check)

        model = keras.models.load_model(run / "model.keras", compile=False)
        log.info("reusing the trained model in %s", run)
        if (run / "run.json").exists():  # the network is the earlier run's: so is its recipe
            recipe = json.loads((run / "run.json").read_text())["training"]["recipe"]
        from training.binary import fit_duration

        started -= fit_duration(run)  # duration_s keeps counting the original training
    else:
        fit(
            model,
            train,
            val,
            SPEC,
            run,
            epochs=epochs,
            lr=lr,
            batch=args.batch,
            class_weight=cw,
            augment=AugmentConfig(),
            patience=2,
            seed=args.seed,
            stage=args.recipe,
        )
    from training.binary import epochs_run, fit_duration, save_curves

    save_curves(run)

    images = {f"{k}_{s}": d[s][0] for k, d in (("m", m), ("e", e)) for s in D.SPLITS}
    heads = {k: predict_heads(model, x) for k, x in images.items()}
    v_logits = np.concatenate([heads["m_val"]["logits"], heads["e_val"]["logits"]])
    temperature = ev.fit_temperature(v_logits, val[1])
    probs = {k: ev.softmax(h["logits"], temperature) for k, h in heads.items()}

    # OOD: Mahalanobis on GAP features, one component per class and per chest X-ray source,
    # fitted on (a subsample of) training features
    from training.ood import (
        component_distances,
        component_scales,
        fit_mahalanobis,
        matplotlib_photos,
        ood_score,
        std_floor,
        write_ood_images,
    )

    rng = np.random.default_rng(args.seed)
    floor = std_floor(np.concatenate([m["train"][0], e["train"][0]]))
    sub = rng.permutation(len(m["train"][1]))[:15000]
    sub = sub[m["train"][0][sub].reshape(len(sub), -1).std(axis=1) >= floor]  # no blanks
    feats = np.concatenate([heads["m_train"]["gap"][sub], heads["e_train"]["gap"]])
    all_components = components_for(args.cxr_components)
    c_src = {s: component_sources(extras[s], args.cxr_components) for s in D.SPLITS}
    comps = component_labels(
        np.concatenate([m["train"][1][sub], e["train"][1]]),
        np.concatenate([np.full(len(sub), "mednist"), c_src["train"]]),
        all_components,
    )
    # components without training images (e.g. no NIH data given) are left out
    present = sorted(set(comps.tolist()))
    names = [all_components[i] for i in present]
    remap = np.full(len(all_components), -1)
    remap[present] = np.arange(len(present))
    comps = remap[comps]
    ood = fit_mahalanobis(feats, comps, len(present))
    ood["std_floor"] = np.array(floor)
    unscaled = dict(ood)  # one threshold in distance units, for the comparison below
    # each component in units of its own radius, measured on its validation images
    v_images = np.concatenate([m["val"][0], e["val"][0]])
    v_comp = remap[
        component_labels(
            val[1],
            np.concatenate([np.full(len(m["val"][1]), "mednist"), c_src["val"]]),
            all_components,
        )
    ]
    v_dist = component_distances(
        np.concatenate([heads["m_val"]["gap"], heads["e_val"]["gap"]]), ood
    )
    v_ok = v_images.reshape(len(v_images), -1).std(axis=1) >= floor
    ood["scale"] = component_scales(v_dist[v_ok], v_comp[v_ok], ACCEPT_TARGET)
    np.savez(run / "ood.npz", **ood)
    score = {k: ood_score(h["gap"], images[k], ood) for k, h in heads.items()}

    def cxr_scores(split: str, sc: dict[str, np.ndarray] = score) -> dict[str, np.ndarray]:
        out = {"mednist": sc[f"m_{split}"][m[split][1] == CXR]}
        out.update({s: sc[f"e_{split}"][e_src[split] == s] for s in CXR_SOURCES[1:]})
        return out

    # the validation OOD set (seed 8 + matplotlib's photographs) is measured before the
    # threshold is set: the threshold keeps the widest margin on both sides of validation
    val_files = write_ood_images(run / "ood_images_val", seed=8, include_photos=False)
    if matplotlib_photos():
        val_files["photograph"] = matplotlib_photos()
    val_ood_heads = {}
    for cat, files in sorted(val_files.items()):
        x = np.stack([D.prepare_one(f, SPEC) for f in files])
        h = predict_heads(model, x)
        val_ood_heads[cat] = (h["gap"], x, ev.softmax(h["logits"], temperature))

    def threshold_rule(params: dict[str, np.ndarray], sc: dict[str, np.ndarray]) -> float:
        accept, _ = threshold_from_validation(cxr_scores("val", sc))
        called_cxr = [
            ood_score(gap, x, params)[
                (pr.argmax(1) == CXR) & (pr[:, CXR] >= GATE["min_probability"])
            ]
            for gap, x, pr in val_ood_heads.values()
        ]
        lowest = min((float(v.min()) for v in called_cxr if len(v)), default=np.inf)
        if not np.isfinite(lowest) or lowest <= accept:
            return accept
        return (accept + lowest) / 2

    threshold = threshold_rule(ood, score)
    _, per_source_quantile = threshold_from_validation(cxr_scores("val"))

    def passed_cxr(pr: np.ndarray, sc: np.ndarray) -> np.ndarray:
        return (sc <= threshold) & (pr.argmax(1) == CXR) & (pr[:, CXR] >= GATE["min_probability"])

    def gate_by_source(split: str) -> dict[str, Any]:
        cxr = m[split][1] == CXR
        acc = np.concatenate(
            [
                passed_cxr(probs[f"m_{split}"][cxr], score[f"m_{split}"][cxr]),
                passed_cxr(probs[f"e_{split}"], score[f"e_{split}"]),
            ]
        )
        src = np.concatenate([np.full(int(cxr.sum()), "mednist"), e_src[split]])
        return _gate_figures(acc, src)

    metrics: dict[str, Any] = {
        "test": ev.evaluate_multiclass(m["test"][1], probs["m_test"], LABELS),
        "validation": ev.evaluate_multiclass(val[1], ev.softmax(v_logits, temperature), LABELS),
    }
    metrics["test"]["note"] = "held-out MedNIST (random 10% split; MedNIST has no patient ids)"
    metrics["test"]["ece_uncalibrated"] = ev.expected_calibration_error(
        ev.softmax(heads["m_test"]["logits"]), m["test"][1]
    )
    chest = {}
    for src in CXR_SOURCES[1:]:
        sel = e_src["test"] == src
        if not sel.any():  # a source not given (no NIH folder): no figures, never NaN
            continue
        pr, sc = probs["e_test"][sel], score["e_test"][sel]
        chest[src] = {
            "n": int(sel.sum()),
            "cxr_recall": float((pr.argmax(1) == CXR).mean()),
            "accepted_by_gate": float(passed_cxr(pr, sc).mean()),
            "ood_refused": float((sc > threshold).mean()),
        }
    metrics["chest_xray_test"] = chest
    # every chest X-ray the gate refuses, validation and test, and which check refused it
    # (the classifier: another class or p(CXR) under the gate's minimum; the OOD check)
    refused: dict[str, list[dict[str, Any]]] = {}
    for split in ("val", "test"):
        pr, sc = probs[f"e_{split}"], score[f"e_{split}"]
        for i in np.where(~passed_cxr(pr, sc))[0]:
            r = extras[split][i]
            by_classifier = bool(pr[i].argmax() != CXR or pr[i, CXR] < GATE["min_probability"])
            refused.setdefault(split, []).append(
                {
                    "file": f"{r.path.parent.name}/{r.path.name}",
                    "source": r.source,
                    "top": LABELS[int(pr[i].argmax())],
                    "p_cxr": round(float(pr[i, CXR]), 4),
                    "ood_score": round(float(sc[i]), 3),
                    "refused_by": [
                        *(["classifier"] if by_classifier else []),
                        *(["ood"] if sc[i] > threshold else []),
                    ],
                }
            )
    metrics["chest_xray_refused"] = refused
    metrics["gate_acceptance"] = {
        "target": ACCEPT_TARGET,
        "validation": gate_by_source("val"),
        "test": gate_by_source("test"),
        "note": "chest X-rays accepted by the whole gate (predicted CXR with p >= "
        f"{GATE['min_probability']} and ood_score <= threshold), per source, with Wilson 95% "
        "CIs; validation images chose the threshold, test images were never used to tune",
    }
    non_cxr = m["test"][1] != CXR
    metrics["mednist_test_gate"] = {
        "cxr_accepted": metrics["gate_acceptance"]["test"]["mednist"]["rate"],
        "non_cxr_accepted_as_cxr": float(
            passed_cxr(probs["m_test"][non_cxr], score["m_test"][non_cxr]).mean()
        ),
    }

    # OOD figures: validation set (seed 8 + matplotlib's photos) checks the rule; the test set
    # (seed 7 + scikit-image's photos and document scans) is only measured
    ood_heads: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def ood_set(files_by_cat: dict[str, list[Path]]) -> tuple[dict[str, Any], list[np.ndarray]]:
        sets: dict[str, Any] = {}
        inputs = []
        for cat, files in sorted(files_by_cat.items()):
            x = np.stack([D.prepare_one(f, SPEC) for f in files])
            inputs.append(x)
            h = predict_heads(model, x)
            ood_heads[cat] = (h["gap"], x, ev.softmax(h["logits"], temperature))
            pr, sc = ev.softmax(h["logits"], temperature), ood_score(h["gap"], x, ood)
            passed = passed_cxr(pr, sc)
            sets[cat] = {
                "n": len(files),
                "refused_by_ood": float((sc > threshold).mean()),
                "passed_as_cxr": float(passed.mean()),
                "refused_by_gate": ev.proportion(~passed),
                "files": {
                    f.name: {
                        "score": round(float(s), 2),
                        "top": LABELS[int(np.argmax(q))],
                        "p_top": round(float(q.max()), 4),
                    }
                    for f, s, q in zip(files, sc, pr, strict=True)
                },
            }
        return sets, inputs

    val_sets, _ = ood_set(val_files)
    ood_heads.clear()  # from here on: the test OOD set only (used by the rule comparison)
    test_sets, ood_inputs = ood_set(
        write_ood_images(run / "ood_images", photos_dir=args.ood_photos)
    )
    ood_eval: dict[str, Any] = {
        "threshold": threshold,
        "threshold_rule": "margin rule: halfway between the smallest threshold that accepts "
        f"{ACCEPT_TARGET:.1%} of every chest X-ray source's validation images and the lowest "
        "score of a validation OOD image that the classifier calls CXR (the former alone "
        "if the two overlap)",
        "per_source_validation_quantile": per_source_quantile,
        "components": names,
        "false_refusal": {
            "mednist_test": float((score["m_test"] > threshold).mean()),
            **{
                f"{s}_test": float((v > threshold).mean())
                for s, v in cxr_scores("test").items()
                if s != "mednist" and len(v)
            },
        },
        "ood_sets_validation": val_sets,
        "ood_sets": test_sets,
    }
    metrics["ood"] = ood_eval

    # the same network with other OOD rules, for the card: 1.0.0's (one CXR mean, pooled
    # 99.5th percentile) and one CXR mean with the per-source rule. ood_heads holds the test
    # OOD set (the last one measured)
    one_mean = fit_mahalanobis(
        feats, np.concatenate([m["train"][1][sub], e["train"][1]]), len(LABELS)
    )
    one_mean["std_floor"] = np.array(floor)
    alt = {k: ood_score(heads[k]["gap"], images[k], one_mean) for k in heads}
    unscaled_score = {k: ood_score(heads[k]["gap"], images[k], unscaled) for k in heads}
    per = "one component per CXR source" + (
        " and finding" if args.cxr_components != "source" else ""
    )
    rules = {
        "one CXR mean; 99.5th percentile of pooled validation scores (the 1.0.0 rule)": (
            one_mean,
            alt,
            float(np.percentile(np.concatenate([alt["m_val"], alt["e_val"]]), 99.5)),
        ),
        "one CXR mean; margin rule": (one_mean, alt, threshold_rule(one_mean, alt)),
        f"{per}, one radius; margin rule": (
            unscaled,
            unscaled_score,
            threshold_rule(unscaled, unscaled_score),
        ),
        f"{per}, each in its own radius; margin rule (shipped)": (
            ood,
            score,
            threshold,
        ),
    }
    comparison = {}
    for name, (params, sc_all, thr) in rules.items():
        cxr = m["test"][1] == CXR
        pr_t = np.concatenate([probs["m_test"][cxr], probs["e_test"]])
        sc_t = np.concatenate([sc_all["m_test"][cxr], sc_all["e_test"]])
        ok_t = (sc_t <= thr) & (pr_t.argmax(1) == CXR) & (pr_t[:, CXR] >= GATE["min_probability"])
        src_t = np.concatenate([np.full(int(cxr.sum()), "mednist"), e_src["test"]])
        ood_rows = {}
        for cat, (gap, x, pr) in ood_heads.items():
            sc = ood_score(gap, x, params)
            ok = (sc <= thr) & (pr.argmax(1) == CXR) & (pr[:, CXR] >= GATE["min_probability"])
            ood_rows[cat] = {"refused_by_ood": float((sc > thr).mean()), "passed": float(ok.mean())}
        comparison[name] = {
            "threshold": thr,
            "test_acceptance": {k: v["rate"] for k, v in _gate_figures(ok_t, src_t).items()},
            "ood_test": ood_rows,
        }
    metrics["ood_rule_comparison"] = comparison

    # the DICOM chest X-ray (MONOCHROME1) must pass the gate
    dicom = args.tb_data.parents[1] / "dicom" / "CR-MONO1-10-chest.dcm"
    if dicom.exists():
        try:
            x = D.prepare_one(dicom, SPEC)[None]
            h = predict_heads(model, x)
            pr, sc = ev.softmax(h["logits"], temperature), ood_score(h["gap"], x, ood)
            metrics["dicom_chest"] = {
                "file": dicom.name,
                "top": LABELS[int(pr.argmax())],
                "p_cxr": float(pr[0, CXR]),
                "ood_score": float(sc[0]),
                "accepted": bool(passed_cxr(pr, sc)[0]),
            }
        except Exception as exc:  # the engine's DICOM loader may be missing on old checkouts
            log.warning("DICOM check skipped: %s", exc)

    pick = [np.where(m["test"][1] == k)[0][:3] for k in range(len(LABELS))]
    parity_x = np.concatenate(
        [m["test"][0][np.concatenate(pick)], e["test"][0][:4], e["test"][0][-4:], *ood_inputs]
    )
    np.save(run / "parity_inputs.npy", parity_x[:48])
    model.save(run / "model.keras")
    from training.runs import _training_info

    info = {
        "id": "modality",
        "version": args.version,
        "name": "Image modality gate",
        "role": "modality",
        "task": "multiclass",
        "labels": LABELS,
        "positive_label": None,
        "preprocessing": SPEC.to_manifest(),
        "temperature": temperature,
        "operating_points": {},
        "gate": GATE,
        "ood": {
            "output": "ood_score",
            "threshold": threshold,
            "method": "Mahalanobis distance of the GAP features to the nearest of "
            f"{len(names)} component means (the five non-chest classes, and chest X-rays "
            "split by source"
            + (" and finding (normal / TB or pneumonia)" if args.cxr_components != "source" else "")
            + ": "
            + ", ".join(CXR_SOURCES)
            + "; shared covariance, fitted on "
            "training features), each distance in units of its component's radius (the "
            f"{ACCEPT_TARGET:.1%} quantile of its validation images' distances), plus 1000 * "
            "relu(1 - "
            f"pixel_std / {float(ood['std_floor']):g}) so images without structure are "
            "refused; threshold = " + ood_eval["threshold_rule"],
        },
        "metrics": metrics,
        "intended_use": INTENDED_USE,
        "limitations": limitations(metrics),
        "training": _training_info(
            {
                "data": CITATIONS,
                "data_path": str(args.data),
                "recipe": recipe,
                "recipe_id": args.recipe,
                "pretrained": "none (from scratch)",
                "split": {
                    "file": "split.csv",
                    "method": "MedNIST 80/10/10 random stratified by class (no patient ids); "
                    "TB/Kermany/NIH images from seeded patient-disjoint 70/15/15 splits "
                    "(the finding models' own): train split added to CXR training, "
                    "validation to validation, test only for evaluation",
                    "seed": args.seed,
                    "counts": {
                        "mednist": D.split_summary(mednist, LABELS),
                        "extra_cxr": {
                            s: {src: int((e_src[s] == src).sum()) for src in CXR_SOURCES[1:]}
                            for s in D.SPLITS
                        },
                    },
                },
                "class_weights": cw,
                "epochs_run": epochs_run(run),
                "fit_duration_s": fit_duration(run),
            },
            started,
            args.seed,
        ),
    }
    (run / "run.json").write_text(json.dumps(info, indent=1))
    t = metrics["test"]
    print(
        f"modality: MedNIST test acc {t['accuracy']:.4f} ({t['errors']} errors / {t['n']}); "
        f"OOD thr {threshold:.2f} (per-source validation {per_source_quantile})"
    )
    for split in ("validation", "test"):
        for src, g in metrics["gate_acceptance"][split].items():
            print(f"  {split} {src}: accepted {g['k']}/{g['n']} CI {g['ci95']}")
    for name, sets in (("val", val_sets), ("test", test_sets)):
        for cat, v in sets.items():
            print(
                f"  OOD {name} {cat}: n={v['n']} refused by OOD {v['refused_by_ood']:.2f} "
                f"passed as CXR {v['passed_as_cxr']:.2f}"
            )
    print("  dicom", metrics.get("dicom_chest"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
