"""``medscreen calibrate`` and ``medscreen site``: site thresholds from the command line.

``calibrate`` screens a clinic's labelled scans with the installed models (reusing stored
results), prints the ROC figures with their confidence intervals, writes a PNG/PDF/JSON
record, and saves the threshold as the site operating point ``site:NAME`` — usable at once
with ``medscreen classify --operating-point site:NAME`` and in the window's picker.
``site list|export|import|delete`` manages the saved points, so one calibration can be
handed from a programme to all its clinics as a small JSON file.

Kept apart from ``cli.py`` (which only registers and dispatches these commands) so the
calibration workflow reads as one piece.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from desktop import DISCLAIMER, __version__
from desktop.engine.calibration import DEFAULT_TARGET_SENSITIVITY
from desktop.engine.errors import BatchError
from desktop.engine.manifest import ModelManifest
from desktop.engine.paths import user_data_dir
from desktop.engine.site_points import SitePointStore, normalize_name

COMMANDS = ("calibrate", "site")
_EXCLUDED_SHOWN = 20


def add_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``calibrate`` and ``site`` on the main parser's sub-commands."""
    cal = sub.add_parser(
        "calibrate",
        help="set a site threshold from labelled scans",
        description="Screen labelled scans and set the threshold that reaches a target "
        "sensitivity with the best specificity, saved as the site operating point site:NAME.",
    )
    cal.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="a folder with one sub-folder per label (e.g. normal/, tuberculosis/)",
    )
    cal.add_argument("--model", required=True, help="the finding model to calibrate, e.g. tb")
    cal.add_argument(
        "--labels",
        type=Path,
        action="append",
        default=[],
        metavar="CSV",
        help="a CSV of file,label rows (paths absolute or relative to the CSV); repeatable",
    )
    cal.add_argument(
        "--target-sensitivity",
        type=float,
        default=DEFAULT_TARGET_SENSITIVITY,
        metavar="S",
        help="sensitivity the threshold must reach, greater than 0 and less than 1 (default 0.90, "
        "WHO's minimum for TB triage)",
    )
    cal.add_argument("--name", required=True, help="site point name, e.g. Yakutsk-2026-12")
    cal.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the ROC figure, PDF and JSON record (default: the user data folder)",
    )
    cal.add_argument("--by", default="", metavar="WHO", help="who calibrated (recorded)")
    cal.add_argument(
        "--no-save", action="store_true", help="print and write the record, save no site point"
    )
    from desktop.cli import add_run_options

    add_run_options(cal)  # --workers, --quiet: as classify
    common(cal)

    site = sub.add_parser("site", help="list, export, import or delete site operating points")
    actions = site.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="saved site points and the models they fit")
    listing.add_argument(
        "--models",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="model folder (repeatable; default: bundled + user models): says which saved "
        "points fit these models",
    )
    export = actions.add_parser("export", help="write a site point to a JSON file")
    export.add_argument("name", help="the site point's name, as 'medscreen site list' shows it")
    export.add_argument("file", type=Path, help="the JSON file to write, e.g. kisumu.json")
    imp = actions.add_parser("import", help="add a site point from a JSON file")
    imp.add_argument("file", type=Path, help="a site point's JSON file ('site export' writes one)")
    imp.add_argument("--name", default=None, help="save it under another name")
    imp.add_argument("--replace", action="store_true", help="replace a different saved point")
    delete = actions.add_parser("delete", help="delete a saved site point")
    delete.add_argument("name", help="the site point's name, as 'medscreen site list' shows it")


def run(args: argparse.Namespace) -> int:
    if args.command == "calibrate":
        return _calibrate(args)
    return _site(args)


def _installed_manifests(dirs: list[Path] | None) -> dict[str, ModelManifest]:
    """The manifests that would load (later folders override earlier), without ONNX Runtime."""
    from desktop.engine.registry import default_model_dirs, discover_manifests

    return discover_manifests(dirs or default_model_dirs()).manifests


def site_point_lines(manifests: Mapping[str, ModelManifest]) -> list[str]:
    """One block per saved site point: per model, usable or why not (``medscreen models``)."""
    store = SitePointStore.default()
    lines = []
    for point in store.points():
        usable = point.valid_for(manifests)
        lines.append(f"{point.choice_name}{'' if usable else '  (not usable with these models)'}")
        for cal in point.calibrations:
            manifest = manifests.get(cal.model_id)
            if manifest is None:
                state = "model not installed"
            elif cal.matches(manifest):
                state = "fits the installed model"
            else:
                state = (
                    f"calibrated on {cal.model_version}, installed is {manifest.version}: "
                    "calibrate again"
                )
            lines.append(f"    {cal.model_id} {cal.model_version}: {cal.summary()} [{state}]")
    lines += [f"warning: {problem}" for problem in store.problems]
    return lines


def _site(args: argparse.Namespace) -> int:
    store = SitePointStore.default()
    if args.site_command == "list":
        lines = site_point_lines(_installed_manifests(args.models))
        print("\n".join(lines) if lines else f"no site operating points in {store.folder}")
        return 0
    if args.site_command == "export":
        path = store.export(args.name, args.file)
        print(f"wrote {path}")
        return 0
    if args.site_command == "import":
        point = store.import_file(args.file, name=args.name, overwrite=args.replace)
        manifests = _installed_manifests(None)
        note = "" if point.valid_for(manifests) else " (it does not fit the installed models)"
        print(f"imported {point.choice_name}{note}")
        return 0
    store.delete(args.name)
    print(f"deleted site:{normalize_name(args.name)}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from desktop.cli import (
        _load_models,
        _ProgressBar,
        _store,
        check_writable,
        drive,
        stopped_status,
    )
    from desktop.engine.labelled import collect_labels, exclusion_summary, run_calibration
    from desktop.engine.reports.calibration import figure_lines, write_calibration_files
    from desktop.engine.runner import BatchRunner
    from desktop.engine.site_points import site_calibration

    target = args.target_sensitivity
    if not 0.0 < target < 1.0:
        raise BatchError(
            f"--target-sensitivity must be greater than 0 and less than 1, got {target:g}"
        )
    name = normalize_name(args.name)
    if not args.paths and not args.labels:
        raise BatchError("give a labelled folder (PATH) or a CSV of file,label (--labels)")
    out: Path = args.out or user_data_dir() / "calibrations"
    check_writable(out)
    store = _store(args)
    models = _load_models(args)
    if args.model not in models.findings:
        known = ", ".join(models.findings) or "none"
        raise BatchError(f"there is no finding model {args.model!r} (installed: {known})")
    manifest = models.findings[args.model].manifest
    labelled = collect_labels(manifest, args.paths, args.labels)
    stream = sys.stderr
    print(
        f"MedScreen {__version__} — calibrating {manifest.id} {manifest.version} on "
        f"{len(labelled.files)} labelled files — device: {models.device.describe()}",
        file=stream,
    )
    runner = BatchRunner(models, store, workers=args.workers)
    bar = _ProgressBar(stream, enabled=not args.quiet)
    stopped_by: list[int] = []
    outcome = drive(run_calibration(runner, labelled, target), runner, bar, stopped_by=stopped_by)
    if outcome is None:  # Ctrl-C, SIGTERM, SIGHUP
        print("interrupted: no calibration was made (screened scans are kept)", file=stream)
        return stopped_status(stopped_by)

    scores = outcome.scores
    excluded = scores.excluded
    print(
        f"{scores.n_positive + scores.n_negative} labelled scans used "
        f"({scores.n_positive} {manifest.positive_label}, {scores.n_negative} other); "
        f"{sum(item.files for item in excluded)} left out",
    )
    if excluded:
        kinds = ", ".join(f"{n} {kind}" for kind, n in exclusion_summary(excluded).items())
        print(f"left out: {kinds}")
        for item in excluded[:_EXCLUDED_SHOWN]:
            print(f"    {item.file}: {item.reason}")
        if len(excluded) > _EXCLUDED_SHOWN:
            print(f"    … and {len(excluded) - _EXCLUDED_SHOWN} more (all in the JSON record)")
    if outcome.calibration is None:
        raise BatchError(f"no calibration: {outcome.error}")

    calibration = outcome.calibration
    cal = site_calibration(
        manifest,
        calibration,
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        calibrated_by=args.by,
        source=outcome.sources,
        n_excluded=len(excluded),
        app_version=__version__,
    )
    print(f"site:{name} — {manifest.name} {manifest.version}")
    for line in figure_lines(cal, calibration.chosen, calibration.prevalence):
        print(f"  {line}")
    default = manifest.operating_point(None)
    print(f"  (the model's own default: {default.describe()})")
    for warning in calibration.warnings:
        print(f"warning: {warning}")
    pairs = [(e.file, e.reason) for e in excluded]
    for path in write_calibration_files(out, name, cal, calibration, calibration.chosen, pairs):
        print(f"  wrote {path}")
    if args.no_save:
        print("not saved (--no-save)")
    else:
        point = SitePointStore.default().add_calibration(name, cal)
        others = [c.model_id for c in point.calibrations if c.model_id != manifest.id]
        also = f" (it also holds: {', '.join(others)})" if others else ""
        print(
            f"saved site operating point {point.choice_name}{also}; screen with it: "
            f"medscreen classify PATH --out DIR --operating-point {point.choice_name}"
        )
    print(DISCLAIMER, file=stream)
    return 0
