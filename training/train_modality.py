"""Train the modality gate: MedNIST's six classes, with real TB/Kermany chest X-rays in CXR.

    tar xzf /work/shared/data/mednist.tar.gz -C /tmp/medscreen
    python -m training.train_modality --data /tmp/medscreen/MedNIST \
        --tb-data /work/shared/data/tb/nlm_299 \
        --pneumonia-data /work/shared/data/pneumonia/kermany224_train --out runs/modality

Why the extra chest images: MedNIST's CXR class is NIH adult chest X-rays at 64×64; the gate
must also accept the TB (NLM) and pediatric (Kermany) radiographs the finding models were
trained on. Only their *training* split (the same seeded split the TB/pneumonia runs use)
enters training; their validation split helps pick the OOD threshold; their test split
measures CXR recall. The OOD check (``training.ood``) is fitted on the training features.
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
OOD_PERCENTILE = 99.5
INTENDED_USE = (
    "Gate of the MedScreen pipeline: decides whether an image is a chest radiograph (CXR) "
    "before the TB and pneumonia models see it, and refuses images that look like none of "
    "its training classes (ood_score above threshold). Recognises six modalities only "
    "(abdomen CT, breast MRI, chest X-ray, chest CT, hand X-ray, head CT)."
)
CITATIONS = [
    "MedNIST (CC BY-SA 4.0), assembled by A. Polanco Lozano from TCIA, the RSNA Bone Age "
    "challenge and the NIH Chest X-ray set; 64x64 grey JPEG (90% of the 58,954 images).",
    "Chest X-rays added to CXR (training split only): NLM TB sets, Jaeger S, et al. Quant "
    "Imaging Med Surg 2014;4(6):475-7; Kermany DS, et al. Cell 2018;172(5):1122-31, "
    "doi:10.17632/rscbjbr9sj.2 (CC BY 4.0).",
]


def _extras(
    records: list[D.Record], split: str, limit: int | None, seed: int, source: str
) -> list[D.Record]:
    rows = D.by_split(records, split)
    if limit is not None and len(rows) > limit:
        idx = np.random.default_rng(seed).permutation(len(rows))[:limit]
        rows = [rows[i] for i in sorted(idx)]
    return [D.Record(r.path, CXR, r.group, source, split) for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__ or "", "runs/modality")
    p.add_argument("--tb-data", type=Path, required=True)
    p.add_argument("--pneumonia-data", type=Path, required=True)
    p.add_argument("--kermany-train", type=int, default=900, help="Kermany train images added")
    p.add_argument("--recipe", choices=["cnn", "seed"], default="cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--reuse-model",
        action="store_true",
        help="evaluate the model.keras already in --out instead of training",
    )
    p.add_argument(
        "--ood-photos",
        type=Path,
        default=None,
        help="folder of photographs/document scans for the OOD measurement "
        "(default: scikit-image's bundled data folder, if installed)",
    )
    args = p.parse_args(argv)
    setup_logging()
    started = time.time()
    from training.fit import AugmentConfig, configure_tf, fit, predict_heads
    from training.models import seed_mednist_cnn, small_cnn

    configure_tf(args.seed)
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    cache = args.cache or D.default_cache_dir()

    mednist = D.split_records(
        limit_per_class(D.list_mednist(args.data), args.limit, args.seed),
        args.fractions or (0.8, 0.1, 0.1),
        seed=args.seed,
    )
    # the same seeded splits the finding models use: no TB/Kermany test image is trained on
    finding_fractions = args.fractions or (0.7, 0.15, 0.15)  # as in training.binary
    tb = D.split_records(
        limit_per_class(D.list_tb(args.tb_data), args.limit, args.seed),
        finding_fractions,
        seed=args.seed,
    )
    pn = D.split_records(
        limit_per_class(D.list_pneumonia(args.pneumonia_data), args.limit, args.seed),
        finding_fractions,
        seed=args.seed,
    )
    k_train = args.kermany_train if not args.limit else args.limit
    extras = {
        "train": _extras(tb, "train", None, args.seed, "nlm_tb")
        + _extras(pn, "train", k_train, args.seed, "kermany"),
        "val": _extras(tb, "val", None, args.seed, "nlm_tb")
        + _extras(pn, "val", k_train // 3, args.seed, "kermany"),
        "test": _extras(tb, "test", None, args.seed, "nlm_tb")
        + _extras(pn, "test", None, args.seed, "kermany"),
    }
    all_records = mednist + [r for rows in extras.values() for r in rows]
    D.write_split_csv(all_records, run / "split.csv", LABELS)

    def arrays(rows: list[D.Record]) -> tuple[np.ndarray, np.ndarray]:
        x = D.build_array([r.path for r in rows], SPEC, cache)
        return x, np.array([r.label for r in rows], dtype=np.int64)

    m = {s: arrays(D.by_split(mednist, s)) for s in D.SPLITS}
    e = {s: arrays(extras[s]) for s in D.SPLITS}
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
    if args.reuse_model and (run / "model.keras").exists():
        import keras  # re-evaluate a trained run (e.g. after changing the OOD check)

        model = keras.models.load_model(run / "model.keras", compile=False)
        log.info("reusing the trained model in %s", run)
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

    heads = {
        k: predict_heads(model, x)
        for k, x in {
            "m_train": m["train"][0],
            "e_train": e["train"][0],
            "m_val": m["val"][0],
            "e_val": e["val"][0],
            "m_test": m["test"][0],
            "e_test": e["test"][0],
        }.items()
    }
    v_logits = np.concatenate([heads["m_val"]["logits"], heads["e_val"]["logits"]])
    temperature = ev.fit_temperature(v_logits, val[1])
    probs = {k: ev.softmax(h["logits"], temperature) for k, h in heads.items()}

    # OOD: Mahalanobis on GAP features, fitted on (a subsample of) training features
    from training.ood import fit_mahalanobis, ood_score, std_floor, write_ood_images

    rng = np.random.default_rng(args.seed)
    floor = std_floor(np.concatenate([m["train"][0], e["train"][0]]))
    sub = rng.permutation(len(m["train"][1]))[:15000]
    sub = sub[m["train"][0][sub].reshape(len(sub), -1).std(axis=1) >= floor]  # no blanks
    feats = np.concatenate([heads["m_train"]["gap"][sub], heads["e_train"]["gap"]])
    flabels = np.concatenate([m["train"][1][sub], e["train"][1]])
    ood = fit_mahalanobis(feats, flabels, len(LABELS))
    ood["std_floor"] = np.array(floor)
    np.savez(run / "ood.npz", **ood)
    images = {
        "m_train": m["train"][0], "e_train": e["train"][0], "m_val": m["val"][0],
        "e_val": e["val"][0], "m_test": m["test"][0], "e_test": e["test"][0],
    }  # fmt: skip
    score = {k: ood_score(h["gap"], images[k], ood) for k, h in heads.items()}
    threshold = float(
        np.percentile(np.concatenate([score["m_val"], score["e_val"]]), OOD_PERCENTILE)
    )

    def refused(k: str) -> np.ndarray:
        return score[k] > threshold

    def passed_cxr(pr: np.ndarray, sc: np.ndarray) -> np.ndarray:
        return (sc <= threshold) & (pr.argmax(1) == CXR) & (pr[:, CXR] >= GATE["min_probability"])

    test_src = np.array([r.source for r in extras["test"]])
    metrics: dict[str, Any] = {
        "test": ev.evaluate_multiclass(m["test"][1], probs["m_test"], LABELS),
        "validation": ev.evaluate_multiclass(val[1], ev.softmax(v_logits, temperature), LABELS),
    }
    metrics["test"]["note"] = "held-out MedNIST (random 10% split; MedNIST has no patient ids)"
    metrics["test"]["ece_uncalibrated"] = ev.expected_calibration_error(
        ev.softmax(heads["m_test"]["logits"]), m["test"][1]
    )
    chest = {}
    for src in ("nlm_tb", "kermany"):
        sel = test_src == src
        pr, sc = probs["e_test"][sel], score["e_test"][sel]
        chest[src] = {
            "n": int(sel.sum()),
            "cxr_recall": float((pr.argmax(1) == CXR).mean()),
            "accepted_by_gate": float(passed_cxr(pr, sc).mean()),
            "ood_refused": float((sc > threshold).mean()),
        }
    metrics["chest_xray_test"] = chest
    metrics["mednist_test_gate"] = {
        "cxr_accepted": float(
            passed_cxr(
                probs["m_test"][m["test"][1] == CXR], score["m_test"][m["test"][1] == CXR]
            ).mean()
        ),
        "non_cxr_accepted_as_cxr": float(
            passed_cxr(
                probs["m_test"][m["test"][1] != CXR], score["m_test"][m["test"][1] != CXR]
            ).mean()
        ),
    }

    # OOD figures on held-out in-distribution and generated/skimage OOD images
    ood_dir = run / "ood_images"
    ood_files = write_ood_images(ood_dir, photos_dir=args.ood_photos)
    ood_eval: dict[str, Any] = {
        "threshold": threshold,
        "threshold_rule": f"{OOD_PERCENTILE}th percentile of validation in-distribution scores",
        "false_refusal": {
            "mednist_test": float(refused("m_test").mean()),
            "nlm_tb_test": float((score["e_test"][test_src == "nlm_tb"] > threshold).mean()),
            "kermany_test": float((score["e_test"][test_src == "kermany"] > threshold).mean()),
        },
        "ood_sets": {},
    }
    ood_inputs = []
    for cat, files in sorted(ood_files.items()):
        x = np.stack([D.prepare_one(f, SPEC) for f in files])
        ood_inputs.append(x)
        h = predict_heads(model, x)
        pr, sc = ev.softmax(h["logits"], temperature), ood_score(h["gap"], x, ood)
        ood_eval["ood_sets"][cat] = {
            "n": len(files),
            "refused_by_ood": float((sc > threshold).mean()),
            "passed_as_cxr": float(passed_cxr(pr, sc).mean()),
            "files": {
                f.name: {
                    "score": round(float(s), 2),
                    "top": LABELS[int(np.argmax(q))],
                    "p_top": round(float(q.max()), 4),
                }
                for f, s, q in zip(files, sc, pr, strict=True)
            },
        }
    metrics["ood"] = ood_eval

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
            "method": "Mahalanobis distance of the GAP features to the nearest class mean "
            "(shared covariance, fitted on training features), plus 1000 * relu(1 - "
            f"pixel_std / {float(ood['std_floor']):g}) so images without structure are "
            f"refused; threshold = {OOD_PERCENTILE}th percentile of in-distribution "
            "validation scores",
        },
        "metrics": metrics,
        "intended_use": INTENDED_USE,
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
                    "TB/Kermany images from the finding models' own seeded "
                    "patient-disjoint splits: train split added to CXR training, "
                    "validation to validation, test only for evaluation",
                    "seed": args.seed,
                    "counts": {
                        "mednist": D.split_summary(mednist, LABELS),
                        "extra_cxr": {s: len(extras[s]) for s in D.SPLITS},
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
        f"chest {chest}; OOD thr {threshold:.2f} false refusal {ood_eval['false_refusal']}"
    )
    for cat, v in ood_eval["ood_sets"].items():
        print(
            f"  OOD {cat}: n={v['n']} refused {v['refused_by_ood']:.2f} "
            f"passed as CXR {v['passed_as_cxr']:.2f}"
        )
    print("  dicom", metrics.get("dicom_chest"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
