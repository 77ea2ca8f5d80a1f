"""Cards of the finding models trained with :mod:`training.transfer` (TB, pneumonia 2.x).

Why a separate writer: these cards must show every comparison run (backbone × input size ×
recipe) with its validation figures, the leave-one-source-out and external-set figures with
their confidence intervals, subgroups (children/adults, PA/AP), the targets with met/missed
and by how much, and what the model must not be used for. Every number and every rule comes
from the manifest (which carries the run's figures) and from the run folders on disk: nothing
here states a threshold rule, a machine or a figure of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.model_card import copy_figures, data_section, finish_card, fmt


def _ci(pair: list[float | None] | None, nd: int = 3) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"{pair[0]:.{nd}f}–{pair[1]:.{nd}f}"


def _rate(r: dict[str, Any]) -> str:
    return f"{r['rate']:.3f} ({r['k']}/{r['n']}; 95% CI {_ci(r['ci95'])})"


def comparison_rows(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """The shipped run and its comparison runs (``<run>_*`` folders made by the same recipe
    module), shipped first."""
    rows = [(run.name, json.loads((run / "run.json").read_text()))]
    for path in sorted(run.parent.glob(f"{run.name}_*/run.json")):
        info = json.loads(path.read_text())
        if "comparison" in info:
            rows.append((path.parent.name, info))
    return rows


def _comparison_section(run: Path, shipped_version: str) -> list[str]:
    rows = comparison_rows(run)
    loso_keys = sorted(
        {k for _, info in rows for k in info["metrics"].get("leave_one_source_out", {})}
    )
    ext_keys = sorted({k for _, info in rows for k in info["metrics"].get("external", {})})
    head = ["run", "backbone", "recipe", "pooling", "views", "contrast", "L2", "val AUC"]
    head += ["val AUC " + s for s in _val_sources(rows)]
    groups = sorted({g for _, i in rows for g in i["metrics"]["validation"].get("by_group", {})})
    head += [f"val AUC {g} group (its point's images)" for g in groups]
    head += [f"LOSO {k} AUC" for k in loso_keys]
    head += [f"{k} flagged (screening)" for k in ext_keys]
    healthy = any("healthy_adults" in info["metrics"] for _, info in rows)
    if healthy:
        head += ["healthy adults flagged, test + external (adult point)"]
    cross = any("cross_source_validation" in info["metrics"] for _, info in rows)
    if cross:
        head += ["cross-source val AUC (its linear probe)"]
    head += ["test AUC"]
    lines = [
        "## Comparison runs",
        "",
        "Every run uses the same split (seed and `split.csv`), the same engine preprocessing "
        "and the same head-fitting code; only the backbone, input size, pooling, number of "
        "views, contrast normalisation or recipe differ (the L2 strength of each is chosen on its "
        "validation split). How the shipped configuration was chosen: "
        f"**{rows[0][1]['comparison']['selection']}**. The pooled test split and the external "
        f"sets were never used to choose (shipped: `{rows[0][0]}`, version {shipped_version})"
        + (
            "; a release decision taken after held-out figures were read is under Release "
            "decisions."
            if any(i["comparison"].get("release", {}).get("after_held_out") for _, i in rows[1:])
            else "."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    # the frozen recipe once (the table's columns say how its runs differ); every run of
    # another recipe with its own recorded text (learning rate, blocks, epoch kept differ)
    recipes: dict[str, str] = {}
    for name, info in rows:
        rid = info["comparison"]["recipe_id"]
        key = f"`{rid}`" if rid == "frozen_lr" else f"`{rid}` (`{name}`)"
        recipes.setdefault(key, info["training"]["recipe"])
    from training.transfer import SELECTION  # what a run records when given no rule

    shipped_rule = rows[0][1]["comparison"]["selection"]
    others: dict[str, list[str]] = {}
    verdicts: dict[str, list[str]] = {}  # the judgement recorded after the run (if any)
    for name, info in rows[1:]:
        if info["comparison"]["selection"] not in (shipped_rule, SELECTION):
            others.setdefault(info["comparison"]["selection"], []).append(f"`{name}`")
            if info["comparison"].get("verdict"):
                verdicts.setdefault(info["comparison"]["selection"], []).append(
                    f"- `{name}`: {info['comparison']['verdict']}"
                )
    for rule, names in others.items():  # runs made later, judged against the shipped one
        lines[4:4] = [
            f"{', '.join(names)}: chosen, or judged against the shipped run, by this rule, "
            f"recorded in each run when it was made, before its results were seen: **{rule}**.",
            "",
            *([*verdicts[rule], ""] if rule in verdicts else []),
        ]
    if len(recipes) > 1:  # name what each recipe is, from the runs' own records
        lines[4:4] = [
            "Recipes, as each run recorded them (the L2 column of a fine-tuned run is its "
            "linear probe's):",
            "",
            *[f"- {k}: {v}" for k, v in recipes.items()],
            "",
        ]
    if cross:
        lines[4:4] = [
            "Cross-source validation AUC: the recipe fitted on one source's training part, "
            "scored on the other source's validation part only (mean of both directions); "
            "in brackets the same design for the run's linear probe, i.e. the frozen recipe "
            "(for a test-time-view or ensemble run, the shipped frozen recipe's).",
            "",
        ]
    if all(info["comparison"]["recipe_id"] == "frozen_lr" for _, info in rows):
        lines[4:4] = [
            "All comparison runs of this version keep the backbone frozen (recipe `frozen_lr`); "
            "no fine-tuned run was made, so whether fine-tuning would travel better is not "
            "known from these figures.",
            "",
        ]
    for name, info in rows:
        c, m = info["comparison"], info["metrics"]
        cells = [
            f"**{name}**" if name == rows[0][0] else name,
            c["backbone"],
            c["recipe_id"],
            c.get("pool", "mean"),
            str(c["views"]) + (f" + {c['fov_views']} FOV" if c.get("fov_views") else ""),
            c["contrast"],
            f"{c['l2']:g}",
            fmt(m["validation"]["auc"]),
        ]
        by_src = m["validation"].get("by_source", {})
        cells += [fmt(by_src.get(s, {}).get("auc")) for s in _val_sources(rows)]
        by_grp = m["validation"].get("by_group", {})
        cells += [fmt(by_grp.get(g, {}).get("auc")) for g in groups]
        loso = m.get("leave_one_source_out", {})
        cells += [fmt(loso.get(k, {}).get("auc")) for k in loso_keys]
        ext = m.get("external", {})
        cells += [
            fmt(ext[k]["flag_rate"]["screening"]["rate"]) if k in ext else "–" for k in ext_keys
        ]
        if healthy:
            h = m.get("healthy_adults", {}).get("screening", {}).get("all")
            cells.append(f"{fmt(h['rate'])} ({h['k']}/{h['n']})" if h else "–")
        if cross:
            cv = m.get("cross_source_validation", {}).get("mean")
            cells.append(f"{fmt(cv['auc'])} ({fmt(cv['auc_linear_probe'])})" if cv else "–")
        cells.append(fmt(m["test"]["auc"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _held_out_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The held-out figures of one run record, (label, cell) each: test AUC, each patient
    group's AUC and sensitivity / specificity at its own screening point, each source's AUC,
    the external sets' and the healthy adults' flag rates."""
    t = m["test"]
    out = [("test AUC (95% CI)", f"{fmt(t['auc'])} ({_ci(t.get('auc_ci95'))})")]
    for g, s in t.get("by_group", {}).items():
        out.append((f"test AUC, {g} group (95% CI)", f"{fmt(s['auc'])} ({_ci(s.get('auc_ci95'))})"))
        c = s["operating_points"]["screening"]["confusion"]
        pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
        out.append(
            (
                f"{g} group at its screening point: sensitivity / specificity",
                f"{fmt(c['tp'] / pos if pos else None)} ({c['tp']}/{pos}) / "
                f"{fmt(c['tn'] / neg if neg else None)} ({c['tn']}/{neg})",
            )
        )
    for src, s in t.get("by_source", {}).items():
        out.append((f"test AUC, source {src}", fmt(s.get("auc"))))
    for k, s in m.get("external", {}).items():
        out.append((f"`{k}` flagged (pooled screening point)", _rate(s["flag_rate"]["screening"])))
    for part, r in m.get("healthy_adults", {}).get("screening", {}).items():
        out.append((f"healthy adults flagged (adult point), {part}", _rate(r)))
    return out


def _release_section(rows: list[tuple[str, dict[str, Any]]], shipped_version: str) -> list[str]:
    """Release decisions recorded in comparison runs (``comparison.release``, written by
    :mod:`training.release`), each with its held-out figures beside the shipped run's. A
    decision taken after the held-out figures were read is called what it is."""
    decided = [(n, i) for n, i in rows[1:] if i["comparison"].get("release")]
    if not decided:
        return []
    lines = ["## Release decisions", ""]
    ship_name, ship = rows[0]
    for name, info in decided:
        r = info["comparison"]["release"]
        version = info.get("version", "–")
        when = (
            "after its held-out figures (test split and external sets) were read: a release "
            "decision on held-out figures, not a choice by the validation rule"
            if r["after_held_out"]
            else "on validation figures only, before its held-out figures were read"
        )
        if r.get("gate_stated_in_advance"):
            when = (
                "after its held-out figures (test split and external sets) were read, by its "
                "rule's validation part and a held-out release gate both stated before the run "
                "was made: the held-out set is used as a release gate, so held-out figures of a "
                "candidate released through it are no longer a clean estimate"
            )
        lines += [
            f"- `{name}` (version {version}): **{r['decision']}** ({r['date']}), decided {when}.",
            f"  - Why: {r['reason']}",
        ]
        if r.get("cost"):
            lines.append(f"  - What it cost: {r['cost']}")
        if r.get("next"):
            lines.append(f"  - Next: {r['next']}")
        mine, theirs = dict(_held_out_rows(ship["metrics"])), _held_out_rows(info["metrics"])
        lines += [
            "",
            f"Held-out figures, the shipped `{ship_name}` {shipped_version} beside `{name}` "
            f"{version} (same split; each group at its own screening point):",
            "",
            f"| figure | `{ship_name}` {shipped_version} (shipped) | `{name}` {version} "
            f"({r['decision']}) |",
            "|---|---|---|",
            *[
                f"| {k} | {mine.get(k, '–')} | {v} |"
                for k, v in theirs
                if (v, mine.get(k, "–")) != ("–", "–")  # e.g. a source without positives
            ],
            "",
        ]
    return lines


def _val_sources(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return sorted({s for _, i in rows for s in i["metrics"]["validation"].get("by_source", {})})


def _points_table(t: dict[str, Any], points: dict[str, Any]) -> list[str]:
    lines = [
        "| operating point | threshold | val sens | val spec | test sens | test spec | test "
        "precision | TP/FN/FP/TN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in [*t["operating_points"].items(), ("p ≥ 0.5", t["at_0.5"])]:
        vp = points.get(name, {})
        c = r["confusion"]
        lines.append(
            f"| {name} | {r['threshold']:.3f} | {fmt(vp.get('sensitivity'))} | "
            f"{fmt(vp.get('specificity'))} | {fmt(r['sensitivity'])} | {fmt(r['specificity'])} | "
            f"{fmt(r['precision'])} | {c['tp']}/{c['fn']}/{c['fp']}/{c['tn']} |"
        )
    return lines


def _group_table(title: str, groups: dict[str, Any]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| group | n (positive) | AUC (95% CI) | screening sens / spec | balanced sens / spec |",
        "|---|---|---|---|---|",
    ]
    for name, s in groups.items():
        sp, bp = s["operating_points"]["screening"], s["operating_points"]["balanced"]
        lines.append(
            f"| {name} | {s['n']} ({s['n_positive']}) | {fmt(s['auc'])} ({_ci(s['auc_ci95'])}) | "
            f"{fmt(sp['sensitivity'])} / {fmt(sp['specificity'])} | "
            f"{fmt(bp['sensitivity'])} / {fmt(bp['specificity'])} |"
        )
    return lines


def _by_group_section(points: dict[str, Any], groups: dict[str, Any]) -> list[str]:
    """Each patient group at its own operating point (``by_group`` in the manifest), with
    Wilson 95% CIs on the test sensitivity and specificity."""
    from training.evaluate import proportion_ci

    def rate(k: int, n: int) -> str:
        if not n:
            return "–"
        lo, hi = proportion_ci(k, n)
        return f"{k / n:.3f} ({lo:.3f}–{hi:.3f})"

    lines = [
        "### Per patient group, each at its own operating point (test)",
        "",
        "The app applies each group's threshold to a scan of that group (the staff's choice, "
        "the file's age, or the child/adult estimate from the image) and the pooled threshold "
        "when the group is not known.",
        "",
        "| group | point | threshold (val n) | val sens / spec | test n (positive) | test AUC "
        "(95% CI) | test sens (95% CI) | test spec (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g, s in groups.items():
        for name, point in points.items():
            vp = point.get("by_group", {}).get(g)
            if vp is None:
                continue
            c = s["operating_points"][name]["confusion"]
            lines.append(
                f"| {g} | {name} | {vp['threshold']:.3f} ({vp.get('n', '–')}) | "
                f"{fmt(vp['sensitivity'])} / {fmt(vp['specificity'])} | {s['n']} "
                f"({s['n_positive']}) | {fmt(s['auc'])} ({_ci(s['auc_ci95'])}) | "
                f"{rate(c['tp'], c['tp'] + c['fn'])} | {rate(c['tn'], c['tn'] + c['fp'])} |"
            )
    return lines


#: The figures a transfer run leaves, with their captions in the card.
FINDING_FIGURES: tuple[tuple[str, str], ...] = (
    ("roc.png", "ROC: validation, test, test per source"),
    ("loso_roc.png", "Leave one source out: ROC on the source left out"),
    ("reliability.png", "Reliability on test before/after temperature scaling"),
)


def write_finding_card(manifest: dict[str, Any], run: Path, out: Path) -> Path:
    """Write ``<out>/<id>.md`` for a finding model trained by :mod:`training.transfer`."""
    mid, m, tr = manifest["id"], manifest["metrics"], manifest["training"]
    points = manifest["operating_points"]
    t = m["test"]
    scope = manifest.get("scope", {})
    ages = scope.get("age_years") or [None, None]
    figs = copy_figures(run, out, mid, FINDING_FIGURES)
    lines = [
        f"# {manifest['name']} — model card (`{mid}` {manifest['version']})",
        "",
        "**Decision support, not a diagnosis.** Scores rank and flag images for review by a "
        "qualified clinician; a low score never rules disease out.",
        "",
        f"- File: `{manifest['file']}` (sha256 `{manifest['sha256'][:16]}…`), manifest "
        f"`{mid}.json`",
        f"- Labels: {', '.join(manifest['labels'])}; positive: **{manifest['positive_label']}**",
        f"- Input `image`: {manifest['input']['shape']} NHWC float32; preprocessing "
        f"`{json.dumps(manifest['preprocessing'])}` (the engine's `preprocess`)",
        f"- Outputs: {', '.join(manifest['outputs'].values())}",
        f"- Scope: ages {fmt(ages[0])}–{fmt(ages[1]) if ages[1] is not None else 'no upper limit'}"
        f" years; views {', '.join(scope.get('views', []))}. {scope.get('summary', '')}",
        "",
        "## Intended use",
        "",
        manifest["intended_use"],
        "",
        "## Must not be used for",
        "",
        *[f"- {x}" for x in manifest.get("not_for", [])],
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[
            f"| {g['target']} | {g['measured']} | "
            + ("**met**" if g["met"] else f"**missed** ({g['gap']})")
            + " |"
            for g in manifest.get("targets", [])
        ],
        "",
        *data_section(tr),
        "## Performance on the held-out test split",
        "",
        f"Test images: {t['n']} ({t['n_positive']} positive). ROC AUC **{t['auc']:.3f}** "
        f"(95% bootstrap CI {_ci(t['auc_ci95'])}).",
        "",
        f"Operating points were chosen on the validation split: {manifest['operating_rule']} "
        f"Default: **{manifest['default_operating_point']}**.",
        "",
        *_points_table(t, points),
        "",
        *_group_table("Per source (test)", t.get("by_source", {})),
    ]
    if t.get("by_group"):
        lines += ["", *_by_group_section(points, t["by_group"])]
    if t.get("subgroups"):
        lines += ["", *_group_table("Children / adults, PA / AP (test)", t["subgroups"])]
    loso = m.get("leave_one_source_out", {})
    if loso:
        lines += [
            "",
            "## Leave one source out (the stand-in for a hospital we have no images from)",
            "",
            "Same recipe fitted on one source's training part (L2 and temperature from its own "
            "validation part, thresholds from it too), tested on every image of the other "
            "source.",
            "",
            "| design | train images | n test (positive) | AUC (95% CI) | screening sens / spec "
            "| median score of positives |",
            "|---|---|---|---|---|---|",
        ]
        for k, s in loso.items():
            sp = s["operating_points"]["screening"]
            lines.append(
                f"| {k} | {s['n_train_images']} | {s['n']} ({s['n_positive']}) | "
                f"{fmt(s['auc'])} ({_ci(s['auc_ci95'])}) | {fmt(sp['sensitivity'])} / "
                f"{fmt(sp['specificity'])} | {fmt(s['median_score_positive'], 2)} |"
            )
    ext = m.get("external", {})
    if ext:
        lines += ["", "## External sets (never trained on, never used to choose)", ""]
        for k, s in ext.items():
            lines.append(
                f"- `{k}`: {s['description']}. Flagged at screening "
                f"{_rate(s['flag_rate']['screening'])}; at balanced "
                f"{_rate(s['flag_rate']['balanced'])}; median score {fmt(s['median_score'])}."
            )
    healthy = m.get("healthy_adults", {})
    if healthy:
        lines += [
            "",
            "## Healthy adults flagged",
            "",
            *(
                [
                    "At the adult operating points (`by_group`), as the app applies them.",
                    "",
                ]
                if any("adult" in v.get("by_group", {}) for v in points.values())
                else []
            ),
            "| operating point | " + " | ".join(healthy["screening"]) + " |",
            "|---|" + "---|" * len(healthy["screening"]),
        ]
        for point, parts in healthy.items():
            lines.append(f"| {point} | " + " | ".join(_rate(r) for r in parts.values()) + " |")
    cal, par = manifest["calibration"], manifest["export"]["parity"]
    lines += [
        "",
        "## Calibration and export",
        "",
        f"Temperature scaling (T = {cal['temperature']:.3f}, {cal['fitted_on']}) is baked into "
        f"the graph. Expected calibration error on test {fmt(t['ece'])} after "
        f"({fmt(t.get('ece_uncalibrated'))} before); reliability diagram below.",
        f"Exported with {manifest['export']['tool']} (opset {manifest['export']['opset']}, "
        f"dynamic batch). Keras vs ONNX Runtime on {par['n_images']} real held-out images: "
        f"max abs difference {par['probabilities']:.2e} on probabilities"
        + (
            f", {par['activation_map_relative']:.1e} relative on the activation map"
            if "activation_map_relative" in par
            else ""
        )
        + (
            f"; ONNX vs the scores behind the figures above {par['run_scores']:.1e}"
            if "run_scores" in par
            else ""
        )
        + ".",
        "",
        "The `activation_map` output is the exact class activation map of the positive class "
        "(last feature maps · Dense weights of the positive class). It shows where the "
        "evidence for the score came from; it is not a segmentation of the lesion.",
        "",
        "## Training",
        "",
        f"- Recipe: {tr['recipe']}",
        f"- Pretrained weights: {tr.get('pretrained', '–')}",
        f"- Duration {tr['duration_s']:.0f} s (features cached between runs) on "
        f"{tr.get('machine', '–')}; {tr.get('framework', '')}",
        f"- Date {tr['date']}, seed {tr['seed']}",
        f"- Reproduce: `{tr['command']}` then "
        f"`python -m export.export_model --run runs/{run.name} "
        "--out assets/models`",
        "",
        *_release_section(comparison_rows(run), manifest["version"]),
        *_comparison_section(run, manifest["version"]),
        "",
    ]
    return finish_card(lines, manifest, run, out, figs)
