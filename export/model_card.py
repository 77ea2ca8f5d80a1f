"""Model cards: ``assets/models/<id>.md``, written from the manifest and the run folder.

Generated rather than hand-written so the figures in the card are always the figures in the
manifest (a card that drifts from its model is worse than none). The limitations that numbers
cannot show are written by the training script into the run record, from that run's own
figures, and travel into the manifest at export: this module holds no sentence about any one
model, machine or threshold, so nothing here can go stale when a model is retrained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REPRODUCE = {
    "tb": "python -m training.train_tb --data <data>/tb/nlm_299 --out runs/tb",
    "pneumonia": "python -m training.train_pneumonia --data <data>/pneumonia/kermany224_train "
    "--out runs/pneumonia",
    "modality": "python -m training.train_modality --data <MedNIST folder> --tb-data "
    "<data>/tb/nlm_299 --pneumonia-data <data>/pneumonia/kermany224_train --nih-data "
    "<data>/pneumonia/nih_adult_1000 --ood-photos <site-packages>/skimage/data "
    "--out runs/modality",
    "agegroup": "python -m training.train_agegroup --data <data> --out runs/agegroup",
}


def _epochs(run: Path) -> dict[str, int]:
    """Epochs per training stage, from the run's history files."""
    return {
        h.stem.removeprefix("history_"): len(json.loads(h.read_text())["loss"])
        for h in sorted(run.glob("history_*.json"))
    }


def fmt(v: Any, nd: int = 3) -> str:
    """A figure for a card: 3 decimals for floats, a dash for a missing value (or NaN: e.g. the
    AUC of a set with one class only)."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


#: The figures a training run may leave, with their captions in the card.
TRAINING_FIGURES: tuple[tuple[str, str], ...] = (
    ("roc.png", "ROC (validation, test, test per source)"),
    ("reliability.png", "Reliability on test before/after temperature scaling"),
    ("curves_finetune.png", "Training curves (fine-tuning)"),
    ("curves_cnn.png", "Training curves"),
)


def copy_figures(
    run: Path, out: Path, model_id: str, figures: tuple[tuple[str, str], ...] = TRAINING_FIGURES
) -> list[tuple[str, str]]:
    """Copy the run's figures that exist next to the card; (caption, relative path) each."""
    figs = []
    (out / "figures").mkdir(exist_ok=True)
    for name, title in figures:
        src = run / name
        if src.exists():
            dst = out / "figures" / f"{model_id}_{name}"
            shutil.copyfile(src, dst)
            figs.append((title, f"figures/{dst.name}"))
    return figs


def data_section(training: dict[str, Any]) -> list[str]:
    """The card's "Data" section: provenance, split method and per-class/source counts."""
    split = training["split"]
    return [
        "## Data",
        "",
        *[f"- {c}" for c in training["data"]],
        "",
        f"Split: {split['method']} (seed {split['seed']}; every image and its "
        f"split are listed in the run's `{split['file']}`).",
        "",
        "```",
        json.dumps(split["counts"], indent=1),
        "```",
        "",
    ]


def _binary_section(m: dict[str, Any], points: dict[str, Any]) -> list[str]:
    t = m["metrics"]["test"]
    lo, hi = t["auc_ci95"]
    lines = [
        "## Performance (held-out test split)",
        "",
        f"Test images: {t['n']} ({t['n_positive']} positive). ROC AUC **{t['auc']:.3f}** "
        f"(95% bootstrap CI {lo:.3f}–{hi:.3f}). Expected calibration error "
        f"{t['ece']:.3f} after temperature scaling ({fmt(t.get('ece_uncalibrated'))} before).",
        "",
        "Thresholds were chosen on the validation split; the test figures below are what "
        "they gave on unseen images. "
        + m.get("operating_rule", "The run record does not state the rule that chose them."),
        "",
        "| operating point | threshold | val sens | val spec | test acc | test sens | test spec "
        "| test precision | test F1 | TP/FN/FP/TN |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    screening, balanced = points.get("screening", {}), points.get("balanced", {})
    if screening and screening.get("threshold") == balanced.get("threshold"):
        lines[-3:-3] = [
            "",
            "For this model the sensitivity floor's threshold lies above the balanced one, "
            "so `screening` uses the balanced threshold: the two points are the same.",
        ]
    rows = [*t["operating_points"].items(), ("p ≥ 0.5", t["at_0.5"])]
    for name, r in rows:
        vp = points.get(name, {})
        c = r["confusion"]
        lines.append(
            f"| {name} | {r['threshold']:.3f} | {fmt(vp.get('sensitivity'))} | "
            f"{fmt(vp.get('specificity'))} | {fmt(r['accuracy'])} | {fmt(r['sensitivity'])} | "
            f"{fmt(r['specificity'])} | {fmt(r['precision'])} | {fmt(r['f1'])} | "
            f"{c['tp']}/{c['fn']}/{c['fp']}/{c['tn']} |"
        )
    if t.get("by_source") and len(t["by_source"]) > 1:
        lines += [
            "",
            "### Per source (test)",
            "",
            "| source | n (pos) | AUC (95% CI) | screening sens / spec | balanced sens / spec |",
            "|---|---|---|---|---|",
        ]
        for src, s in t["by_source"].items():
            sp, bp = s["operating_points"]["screening"], s["operating_points"]["balanced"]
            lines.append(
                f"| {src} | {s['n']} ({s['n_positive']}) | {s['auc']:.3f} "
                f"({s['auc_ci95'][0]:.3f}–{s['auc_ci95'][1]:.3f}) | "
                f"{fmt(sp['sensitivity'])} / {fmt(sp['specificity'])} | "
                f"{fmt(bp['sensitivity'])} / {fmt(bp['specificity'])} |"
            )
    return lines


def _modality_section(m: dict[str, Any]) -> list[str]:
    met = m["metrics"]
    t = met["test"]
    labels = t["confusion"]["labels"]
    lines = [
        "## Performance",
        "",
        f"Held-out MedNIST test split: accuracy **{t['accuracy']:.4f}** ({t['errors']} errors "
        f"in {t['n']}), ECE {t['ece']:.4f}.",
        "",
        "Confusion matrix (rows = truth, columns = prediction):",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for name, row in zip(labels, t["confusion"]["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        "Chest X-rays from the finding models' held-out test splits:",
        "",
        "| set | n | predicted CXR | accepted by the gate (CXR and not OOD) | OOD-refused |",
        "|---|---|---|---|---|",
    ]
    for src, c in met.get("chest_xray_test", {}).items():
        lines.append(
            f"| {src} | {c['n']} | {c['cxr_recall']:.4f} | {c['accepted_by_gate']:.4f} "
            f"| {c['ood_refused']:.4f} |"
        )
    g = met.get("mednist_test_gate", {})
    if g:
        lines += [
            "",
            f"MedNIST test: CXR accepted by the gate {g['cxr_accepted']:.4f}; non-CXR "
            f"images accepted as CXR {g['non_cxr_accepted_as_cxr']:.4f}.",
        ]
    acc = met.get("gate_acceptance")
    if acc:
        lines += [
            "",
            f"Target: ≥ {acc['target']:.1%} of every source's chest X-rays accepted. "
            f"Figures: {acc['note']}.",
            "",
            "| source | validation accepted | test accepted | test 95% CI |",
            "|---|---|---|---|",
        ]
        for src, t in acc["test"].items():
            v = acc["validation"].get(src, {})
            lines.append(
                f"| {src} | {v.get('k', '–')}/{v.get('n', '–')} | {t['k']}/{t['n']} "
                f"({t['rate']:.4f}) | {t['ci95'][0]:.4f}–{t['ci95'][1]:.4f} |"
            )
    refused = met.get("chest_xray_refused")
    if refused:
        lines += [
            "",
            "Every chest X-ray the gate refused (NLM, Kermany and NIH; validation and test), "
            "and which check refused it:",
            "",
            "| split | file | source | called | p(CXR) | OOD score | refused by |",
            "|---|---|---|---|---|---|---|",
        ]
        for split, rows in refused.items():
            lines += [
                f"| {split} | `{r['file']}` | {r['source']} | {r['top']} | {r['p_cxr']:.3f} | "
                f"{r['ood_score']:.2f} | {' and '.join(r['refused_by'])} |"
                for r in rows
            ]
    d = met.get("dicom_chest")
    if d:
        lines += [
            "",
            f"DICOM chest CR (`{d['file']}`, MONOCHROME1, via the app's loader): "
            f"predicted {d['top']} (p(CXR) = {d['p_cxr']:.3f}), OOD score "
            f"{d['ood_score']:.2f}, accepted = {d['accepted']}.",
        ]
    o = met.get("ood")
    if o:
        lines += [
            "",
            "## Out-of-distribution check",
            "",
            f"`ood_score` = {m['ood']['method']}. Threshold **{o['threshold']:.2f}**. Scans "
            "above it are refused as not recognised, whatever the class probabilities say.",
            "",
            "False refusals on held-out in-distribution images: "
            + ", ".join(f"{k} {v:.4f}" for k, v in o["false_refusal"].items())
            + ".",
            "",
            "Refusals on out-of-distribution images (generated offline with Pillow, or shipped "
            "inside scikit-image; read through the app's loader):",
            "",
            "| set | n | refused by OOD | passed the gate as CXR |",
            "|---|---|---|---|",
        ]
        for cat, v in o["ood_sets"].items():
            lines.append(
                f"| {cat} | {v['n']} | {v['refused_by_ood']:.2f} | {v['passed_as_cxr']:.2f} |"
            )
        if o.get("ood_sets_validation"):
            lines += [
                "",
                "Validation OOD set (other noise and text pages, matplotlib's photographs; "
                "measured before the threshold was set: the margin rule uses its lowest "
                "score among images the classifier calls CXR):",
                "",
                "| set | n | refused by OOD | passed the gate as CXR |",
                "|---|---|---|---|",
            ]
            for cat, v in o["ood_sets_validation"].items():
                lines.append(
                    f"| {cat} | {v['n']} | {v['refused_by_ood']:.2f} | {v['passed_as_cxr']:.2f} |"
                )
    rules = met.get("ood_rule_comparison")
    if rules:
        lines += [
            "",
            "### OOD rules compared (same network, same images)",
            "",
            "| rule | threshold | test acceptance per source | test OOD images passed as CXR |",
            "|---|---|---|---|",
        ]
        for name, r in rules.items():
            passed = sum(v["passed"] * o["ood_sets"][c]["n"] for c, v in r["ood_test"].items())
            total = sum(o["ood_sets"][c]["n"] for c in r["ood_test"])
            lines.append(
                f"| {name} | {r['threshold']:.2f} | "
                + ", ".join(f"{k} {v:.4f}" for k, v in r["test_acceptance"].items())
                + f" | {passed:.0f}/{total} |"
            )
    return lines


def _cells_table(title: str, cells: dict[str, Any]) -> list[str]:
    lines = [title, "", "| source / group | correct | share | 95% CI |", "|---|---|---|---|"]
    for cell, c in cells.items():
        lines.append(
            f"| {cell} | {c['k']}/{c['n']} | {c['rate']:.3f} | "
            f"{c['ci95'][0]:.3f}–{c['ci95'][1]:.3f} |"
        )
    return lines


def _agegroup_section(m: dict[str, Any]) -> list[str]:
    """Patient-group model: per (source, group) figures, NIH cross-validation, leave-out
    designs, the recipes compared by the selection rule."""
    met = m["metrics"]
    t = met["test"]
    point = m["operating_points"][m["default_operating_point"]]
    target = met["target_per_cell"]
    rule = met.get("selection_rule")
    trule = met.get("threshold_rule")  # 1.2.0 on; before it the worst-cell rule was implied
    how = (
        f"set by the **{trule['rule']}** threshold rule on {trule['set_on']}"
        if trule
        else "chosen "
        + ("on cross-validation out-of-fold predictions" if rule else "on validation")
        + " to make the worst (source, group) cell as good as possible"
    )
    lines = [
        "## Performance",
        "",
        f"A scan is estimated to show a **child** when p(child) ≥ {point['threshold']:.2f} "
        f"(operating point `{m['default_operating_point']}`, {how}). Target: ≥ "
        f"{target:.0%} of children and of adults placed correctly in every source.",
    ]
    if trule:
        lines += [
            "",
            f"**Threshold rule `{trule['rule']}`**: {trule['what']}.",
            "",
            f"*Why*: {trule['why']}.",
            "",
            f"*When it was decided*: {trule['decided']}.",
        ]
    if rule:
        lines += ["", f"Recipe selection rule ({rule})."]
    lines += [
        "",
        *_cells_table("Held-out test split (patient-disjoint):", t["cells"]),
        "",
        f"Worst test cell {t['worst_cell']:.3f}: target "
        + ("**met**" if t["target_met"] else "**not met**")
        + f". Test AUC {t['auc']:.3f} (all sources pooled).",
    ]
    if "augmented_cells" in t:
        lines += [
            "",
            *_cells_table(
                "The same test images, each seen once through a training augmentation (source "
                "shift: crop/aspect, rotation, flip, storage round trip, contrast, noise): "
                "source cues scrambled, anatomy kept:",
                t["augmented_cells"],
            ),
        ]
    ages = t.get("nih_children_by_age")
    if ages:
        lines += [
            "",
            "NIH children of the test split by age: "
            + "; ".join(f"{band} years {c['k']}/{c['n']} called child" for band, c in ages.items())
            + ".",
        ]
    cv = met.get("nih_cv")
    if cv:
        lines += [
            "",
            "### Every NIH image held out once (nested cross-validation)",
            "",
            f"The test split holds only a dozen NIH children; here {cv['method']}.",
            "",
            *_cells_table("NIH, out of fold:", cv["cells"]),
            "",
            "NIH children placed correctly by age: "
            + "; ".join(f"{b} years {c['k']}/{c['n']}" for b, c in cv["children_by_age"].items())
            + "; NIH adults: "
            + "; ".join(
                f"{b.replace('-+', '+')} years {c['k']}/{c['n']}"
                for b, c in cv["adults_by_age"].items()
            )
            + f". AUC {cv['auc']:.3f}; fold thresholds "
            + ", ".join(f"{x:.2f}" for x in cv["thresholds"])
            + ".",
        ]
        short = {f"test {c}": v for c, v in t["cells"].items() if v["rate"] < target}
        short |= {f"NIH CV {c}": v for c, v in cv["cells"].items() if v["rate"] < target}
        if short:
            lines += [
                "",
                "Short of the target: "
                + "; ".join(
                    f"{c} {v['rate']:.3f} ({(target - v['rate']) * 100:.1f} points below)"
                    for c, v in short.items()
                )
                + ".",
            ]
    alt = met.get("alternative")
    nih_alt = (cv or {}).get("alternative")
    if alt:
        lines += [
            "",
            f"### The other side of the trade-off: the `{alt['threshold_rule']}` rule (not the "
            "default)",
            "",
            "A scan estimated as a child gets no TB flag: an adult taken for a child *loses* "
            "it; a child taken for an adult keeps a TB score. The other threshold rule "
            f"(p(child) ≥ {alt['threshold']:.2f}; {alt['what']}) would place:",
            "",
            *_cells_table("Held-out test split at that threshold:", alt["test_cells"]),
        ]
    elif met.get("adults_first"):  # manifests before 1.2.0: the alternative was adults-first
        alt = met["adults_first"]
        nih_alt = (cv or {}).get("adults_first")
        lines += [
            "",
            "### The other side of the trade-off (not the default)",
            "",
            "A scan estimated as a child gets no TB flag: an adult taken for a child *loses* "
            "it. The threshold that keeps every adult cell at the target out of fold "
            f"(p(child) ≥ {alt['threshold']:.2f}; {alt['what']}) would place:",
            "",
            *_cells_table("Held-out test split at that threshold:", alt["test_cells"]),
        ]
    if alt and nih_alt:
        lines += [
            "",
            "NIH, nested cross-validation at that rule: "
            + "; ".join(f"{c} {v['k']}/{v['n']}" for c, v in nih_alt["cells"].items())
            + " (children by age: "
            + "; ".join(
                f"{b} years {c['k']}/{c['n']}" for b, c in nih_alt["children_by_age"].items()
            )
            + ").",
        ]
    lines += [
        "",
        "### Leave-out designs (is it the hospital?)",
        "",
        "The head is refitted without a part of the data (threshold again by the "
        + (f"{trule['rule']} threshold rule" if trule else "rule")
        + " on the remaining development images' out-of-fold predictions), then tested on "
        "*every* image of the part left out (none was seen) and on the rest of the test "
        "split.",
        "",
        "| design | left out: placed correctly (95% CI) | NIH children by age "
        "| rest of test, worst cell |" + (" left out, at the other rule |" if trule else ""),
        "|---|---|---|---|" + ("---|" if trule else ""),
    ]
    for name, d in met.get("leave_out", {}).items():
        left = "; ".join(
            f"{cell} {c['k']}/{c['n']} = {c['rate']:.3f} ({c['ci95'][0]:.3f}–{c['ci95'][1]:.3f})"
            for cell, c in d["left_out"].items()
        )
        ages = "; ".join(
            f"{band}: {c['k']}/{c['n']}" for band, c in d["left_out_nih_children_by_age"].items()
        )
        rest = min((c["rate"] for c in d["test_of_the_rest"].values()), default=None)
        other = d.get("alternative")
        extra = (
            f" {other['threshold_rule']} (p(child) ≥ {other['threshold']:.2f}): "
            + "; ".join(f"{cell} {c['k']}/{c['n']}" for cell, c in other["left_out"].items())
            + " |"
            if trule and other
            else (" – |" if trule else "")
        )
        lines.append(
            f"| {name} (p(child) ≥ {d['threshold']:.2f}) | {left or '–'} | {ages or '–'} | "
            f"{fmt(rest)} |{extra}"
        )
    comp = met.get("comparison", {})
    if comp and rule:
        lines += [
            "",
            "### Recipes compared (cross-validation over the development images only)",
            "",
            *(
                [
                    "Recipes are compared at each one's worst-cell threshold (the selection "
                    "rule, unchanged); the shipped threshold is then set by the threshold "
                    "rule on the chosen recipe's out-of-fold predictions.",
                    "",
                ]
                if trule
                else []
            ),
            "| recipe | L2 | threshold | out-of-fold cells (correct/n) | worst | mean | shipped |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, c in comp.items():
            cells = ", ".join(f"{k} {v['k']}/{v['n']}" for k, v in c["cv_cells"].items())
            lines.append(
                f"| `{name}`: {c['recipe']} | {c['l2']:g} | {c['threshold']:.2f} | {cells} | "
                f"{c['cv_worst_cell']:.3f} | {c['cv_mean_cell']:.3f} | "
                + ("**yes**" if name == met.get("chosen_recipe") else "no")
                + " |"
            )
    elif comp:
        lines += [
            "",
            "### Backbones compared (validation; the better worst cell is shipped)",
            "",
            "| backbone | L2 | threshold | validation worst cell | cell log loss | shipped |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in comp.items():
            lines.append(
                f"| {c['backbone']} | {c['l2']:g} | {c['threshold']:.2f} | "
                f"{c['validation_worst_cell']:.3f} | {c['validation']['cell_logloss']:.4f} | "
                + ("**yes**" if name == met.get("chosen_backbone") else "no")
                + " |"
            )
    fx = met.get("fixtures")
    if fx:
        right = sum(
            (v["p_child"] >= point["threshold"]) == (v["group"] == "child") for v in fx.values()
        )
        lines += [
            "",
            f"Test-suite fixtures (`tests/data`, held out of training and validation): "
            f"{right}/{len(fx)} placed correctly.",
        ]
    return lines


def _seed_section(run: Path, model_id: str) -> list[str]:
    """Comparison runs on the same split: ``<run>_seed*`` (seed-article recipes) and other
    ``<run>_*`` variants, read from their run folders."""
    comparisons = sorted(run.parent.glob(f"{run.name}_*/run.json"))
    if not comparisons:
        return ["## Seed-article recipe", "", "Not run for this version."]
    lines = [
        "## Comparison runs (same split, not shipped)",
        "",
        "The shipped recipe is listed first; thresholds of every run were chosen on its own "
        "validation predictions.",
        "",
    ]
    for path in [run / "run.json", *comparisons]:
        info = json.loads(path.read_text())
        tr, t = info["training"], info["metrics"]["test"]
        kind = (
            "**shipped**"
            if path.parent == run
            else "seed article"
            if "seed" in path.parent.name
            else "variant"
        )
        if "auc" in t:
            sp = t["operating_points"]["screening"]
            lines.append(
                f"- {kind} (`{path.parent.name}`): {tr['recipe']}. Validation AUC "
                f"{info['metrics']['validation']['auc']:.3f}; test AUC {t['auc']:.3f} "
                f"({t['auc_ci95'][0]:.3f}–{t['auc_ci95'][1]:.3f}), screening sens/spec "
                f"{fmt(sp['sensitivity'])}/{fmt(sp['specificity'])}, accuracy at 0.5 "
                f"{fmt(t['at_0.5']['accuracy'])}; epochs {_epochs(path.parent)}, "
                f"{tr['duration_s']:.0f} s."
            )
            by_source = t.get("by_source", {})
            if len(by_source) > 1:
                lines.append(
                    "  Per source AUC: "
                    + ", ".join(f"{src} {s['auc']:.3f}" for src, s in by_source.items())
                )
        else:
            lines.append(
                f"- {kind} (`{path.parent.name}`): {tr['recipe']}. MedNIST test accuracy "
                f"{t['accuracy']:.4f} ({t['errors']} errors); epochs {_epochs(path.parent)}, "
                f"{tr['duration_s']:.0f} s."
            )
    return lines


class CardError(ValueError):
    """A model card cannot be written honestly from what the manifest and run record hold."""


def limitations(manifest: dict[str, Any], run: Path) -> list[str]:
    """The model's limitations: the manifest's (copied from the run record at export), else
    the run record's own (a run exported before manifests carried them). A card without any
    is refused: a model card that states no limitation misleads."""
    found = manifest.get("limitations")
    record = run / "run.json"
    if not found and record.exists():
        found = json.loads(record.read_text(encoding="utf-8")).get("limitations")
    if not found:
        raise CardError(
            f"{manifest['id']} {manifest['version']}: neither the manifest nor {record} "
            "states the model's limitations (the training script writes them into run.json)"
        )
    return [str(x) for x in found]


def write_card(manifest: dict[str, Any], run: Path, out: Path) -> Path:
    """Write ``<out>/<id>.md`` for an exported model."""
    if manifest.get("role") == "finding" and "comparison" in manifest:
        from export.finding_card import write_finding_card  # training.transfer models

        return write_finding_card(manifest, run, out)
    mid = manifest["id"]
    tr = manifest["training"]
    figs = copy_figures(run, out, mid)
    lines = [
        f"# {manifest['name']} — model card (`{mid}` {manifest['version']})",
        "",
        "**Decision support, not a diagnosis.** Scores rank and flag images for review by a "
        "qualified clinician; a low score never rules disease out.",
        "",
        f"- File: `{manifest['file']}` (sha256 `{manifest['sha256'][:16]}…`), manifest "
        f"`{mid}.json`",
        f"- Labels: {', '.join(manifest['labels'])}"
        + (
            f"; positive: **{manifest['positive_label']}**"
            if manifest.get("positive_label")
            else ""
        ),
        f"- Input `image`: {manifest['input']['shape']} NHWC float32; preprocessing "
        f"`{json.dumps(manifest['preprocessing'])}` (the engine's `preprocess`)",
        f"- Outputs: {', '.join(manifest['outputs'].values())}"
        + (", ood_score" if manifest.get("ood") else ""),
        "",
        "## Intended use",
        "",
        manifest["intended_use"],
        "",
        *data_section(tr),
    ]
    if manifest["role"] == "finding":
        lines += _binary_section(manifest, manifest["operating_points"])
        lines += [
            "",
            f"Default operating point: **{manifest['default_operating_point']}** "
            "(sensitivity ≥ 0.90 on validation with the best specificity). `balanced` "
            "maximises Youden's J on validation.",
        ]
        if mid == "tb":
            s = manifest["metrics"]["test"]["operating_points"]["screening"]
            met = (s["sensitivity"] or 0) >= 0.90 and (s["specificity"] or 0) >= 0.70
            lines += [
                "",
                "WHO minimum for a TB screening test (sensitivity ≥ 0.90, specificity ≥ 0.70): "
                f"on our test split the screening point gives sensitivity "
                f"{fmt(s['sensitivity'])} and specificity {fmt(s['specificity'])} — "
                + ("**met**." if met else "**not met**."),
            ]
        lines += [
            "",
            "The `activation_map` output is the exact class activation map of the positive "
            "class (last feature maps · Dense weights of the positive class, before the "
            "softmax). It shows where the evidence for the score came from; it is not a "
            "segmentation of the lesion.",
        ]
    elif manifest["role"] == "patient_group":
        lines += _agegroup_section(manifest)
    else:
        lines += _modality_section(manifest)
    cal = manifest["calibration"]
    par = manifest["export"]["parity"]
    lines += [
        "",
        "## Calibration and export",
        "",
        f"Temperature scaling (T = {cal['temperature']:.3f}, "
        f"{cal.get('fitted_on', 'fitted on validation NLL')}) is baked into the graph.",
        f"Exported with tf2onnx (opset {manifest['export']['opset']}, dynamic batch). Keras vs "
        f"ONNX Runtime on {par['n_images']} real held-out images: max abs difference "
        f"{par['probabilities']:.2e} on probabilities"
        + (
            f", {par['activation_map_relative']:.1e} relative on the activation map"
            if "activation_map_relative" in par
            else ""
        )
        + (
            f", {par['ood_score_relative']:.1e} relative on ood_score"
            if "ood_score_relative" in par
            else ""
        )
        + ".",
        "",
        "## Training",
        "",
        f"- Recipe: {tr['recipe']}",
        f"- Pretrained weights: {tr.get('pretrained', '–')}",
        f"- Epochs run: {tr.get('epochs_run') or _epochs(run)}; "
        f"duration {tr['duration_s']:.0f} s on "
        f"{tr.get('machine', 'CPU')}; {tr.get('framework', '')}",
        f"- Date {tr['date']}, seed {tr['seed']}",
        f"- Reproduce: `{tr.get('command') or REPRODUCE.get(mid, '')}` then "
        f"`python -m export.export_model --run runs/{mid} --out assets/models`",
        "",
        *(_seed_section(run, mid) if manifest["role"] != "patient_group" else []),
        "",
    ]
    return finish_card(lines, manifest, run, out, figs)


def finish_card(
    lines: list[str],
    manifest: dict[str, Any],
    run: Path,
    out: Path,
    figs: list[tuple[str, str]],
) -> Path:
    """End every card the same way (its limitations, then its figures) and write it."""
    lines = [*lines, "## Limitations", "", *[f"- {x}" for x in limitations(manifest, run)], ""]
    if figs:
        lines += ["## Figures", "", *[f"![{title}]({path})" for title, path in figs], ""]
    path = out / manifest["card"]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
