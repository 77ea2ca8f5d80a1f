"""Site operating points: thresholds a clinic set on its own labelled scans, saved and shared.

A site point has a name (used as ``site:NAME`` wherever an operating point is chosen) and one
calibration per finding model. Each calibration is tied to the *exact* model it was measured
on: id, version and the sha256 of its ``.onnx`` file. A threshold is a property of one
model's scores, so when a model is updated the old site threshold is not carried over: the
point is no longer offered, and choosing it by name fails with a message that says to
calibrate again. A model the site point has no calibration for keeps its manifest default,
and every report names the point each model really used.

Points live as small JSON files in the user's data folder (``site_points/NAME.json``). The
same file is the export format, so a programme can calibrate once and hand the file to all
its clinics (``medscreen site export`` / ``import``, or the buttons in the Calibrate dialog).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from desktop.engine.atomic import atomic_open
from desktop.engine.errors import MedScreenError, ModelError
from desktop.engine.manifest import ModelManifest, OperatingPoint
from desktop.engine.paths import user_data_dir

if TYPE_CHECKING:
    from desktop.engine.calibration import Calibration, PointStats

log = logging.getLogger(__name__)

SITE_PREFIX = "site:"
SCHEMA = "medscreen-site-operating-point"
SCHEMA_VERSION = 1
_NAME = re.compile(r"[^\W_][\w.\-]{0,63}")


class SitePointError(MedScreenError):
    """A site point cannot be found, read, saved or imported; the message says why."""


def normalize_name(text: str) -> str:
    """``"site:Yakutsk-2026-12"`` or ``"Yakutsk-2026-12"`` → ``"Yakutsk-2026-12"`` (checked).

    Names become file names, so they are letters, digits, ``.``, ``-`` and ``_`` only.
    """
    name = text.strip()
    if name[: len(SITE_PREFIX)].lower() == SITE_PREFIX:
        name = name[len(SITE_PREFIX) :].strip()
    if not _NAME.fullmatch(name):
        raise SitePointError(
            f"{text!r} is not a usable site point name: use letters, digits, '.', '-' or '_' "
            "(up to 64, starting with a letter or digit), e.g. Yakutsk-2026-12"
        )
    return name


def is_site_choice(text: str | None) -> bool:
    return bool(text) and str(text)[: len(SITE_PREFIX)].lower() == SITE_PREFIX


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = value
    return (float(lo), float(hi))


@dataclass(frozen=True)
class SiteCalibration:
    """One model's calibration at a site: the threshold, what it gave, and where it came from."""

    model_id: str
    model_version: str
    model_sha256: str
    threshold: float
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    auc: float
    auc_ci: tuple[float, float]
    n_positive: int
    n_negative: int
    tp: int
    fn: int
    fp: int
    tn: int
    calibrated_at: str  # ISO 8601, UTC
    target_sensitivity: float | None = None
    chosen_by: str = "target"  # "target": from the target sensitivity; "manual": moved by hand
    calibrated_by: str = ""
    source: str = ""
    n_excluded: int = 0
    model_name: str = ""
    app_version: str = ""
    bootstrap_resamples: int = 0
    bootstrap_seed: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return self.n_positive + self.n_negative

    def matches(self, manifest: ModelManifest) -> bool:
        """True only for the very model it was measured on (id, version and file hash)."""
        return (
            manifest.id == self.model_id
            and manifest.version == self.model_version
            and manifest.sha256.lower() == self.model_sha256.lower()
        )

    def calibrated_when(self) -> str:
        """``2026-12-01 16:08 UTC`` from the stored ISO time (as written, if it is not one)."""
        from datetime import UTC, datetime

        try:
            stamp = datetime.fromisoformat(self.calibrated_at)
        except ValueError:
            return self.calibrated_at
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(UTC)
        return stamp.strftime("%Y-%m-%d %H:%M UTC")

    def model_label(self) -> str:
        return f"{self.model_id} {self.model_version} (sha256 {self.model_sha256[:12]})"

    def summary(self) -> str:
        """One line for reports and the CLI: threshold, figures with CIs, date, n."""
        return (
            f"threshold {self.threshold:.3f}; site sensitivity {self.sensitivity:.2f} "
            f"(95% CI {self.sensitivity_ci[0]:.2f}–{self.sensitivity_ci[1]:.2f}), specificity "
            f"{self.specificity:.2f} ({self.specificity_ci[0]:.2f}–{self.specificity_ci[1]:.2f}), "
            f"AUC {self.auc:.2f} ({self.auc_ci[0]:.2f}–{self.auc_ci[1]:.2f}); calibrated "
            f"{self.calibrated_at[:10]} on {self.n} labelled scans ({self.n_positive} with "
            f"the disease, {self.n_negative} without)"
            + (f" by {self.calibrated_by}" if self.calibrated_by else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {
                "id": self.model_id,
                "version": self.model_version,
                "sha256": self.model_sha256,
                "name": self.model_name,
            },
            "threshold": self.threshold,
            "chosen_by": self.chosen_by,
            "target_sensitivity": self.target_sensitivity,
            "sensitivity": self.sensitivity,
            "sensitivity_ci95": list(self.sensitivity_ci),
            "specificity": self.specificity,
            "specificity_ci95": list(self.specificity_ci),
            "auc": self.auc,
            "auc_ci95": list(self.auc_ci),
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "n_excluded": self.n_excluded,
            "confusion": {"tp": self.tp, "fn": self.fn, "fp": self.fp, "tn": self.tn},
            "calibrated_at": self.calibrated_at,
            "calibrated_by": self.calibrated_by,
            "source": self.source,
            "app_version": self.app_version,
            "bootstrap": {"resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed},
            "ci_method": "sensitivity/specificity: Wilson score; AUC: stratified bootstrap",
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteCalibration:
        model = data["model"]
        confusion = data["confusion"]
        boot = data.get("bootstrap", {})
        target = data.get("target_sensitivity")
        cal = cls(
            model_id=str(model["id"]),
            model_version=str(model["version"]),
            model_sha256=str(model["sha256"]).lower(),
            model_name=str(model.get("name", "")),
            threshold=float(data["threshold"]),
            chosen_by=str(data.get("chosen_by", "target")),
            target_sensitivity=None if target is None else float(target),
            sensitivity=float(data["sensitivity"]),
            sensitivity_ci=_pair(data["sensitivity_ci95"]),
            specificity=float(data["specificity"]),
            specificity_ci=_pair(data["specificity_ci95"]),
            auc=float(data["auc"]),
            auc_ci=_pair(data["auc_ci95"]),
            n_positive=int(data["n_positive"]),
            n_negative=int(data["n_negative"]),
            n_excluded=int(data.get("n_excluded", 0)),
            tp=int(confusion["tp"]),
            fn=int(confusion["fn"]),
            fp=int(confusion["fp"]),
            tn=int(confusion["tn"]),
            calibrated_at=str(data["calibrated_at"]),
            calibrated_by=str(data.get("calibrated_by", "")),
            source=str(data.get("source", "")),
            app_version=str(data.get("app_version", "")),
            bootstrap_resamples=int(boot.get("resamples", 0)),
            bootstrap_seed=int(boot.get("seed", 0)),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
        )
        if not 0.0 <= cal.threshold <= 1.0 or not math.isfinite(cal.threshold):
            raise ValueError(f"threshold {cal.threshold} is outside [0, 1]")
        if len(cal.model_sha256) != 64:
            raise ValueError("the model sha256 must be 64 hex digits")
        return cal


@dataclass(frozen=True)
class SiteOperatingPoint(OperatingPoint):
    """A manifest-style operating point that came from a site calibration.

    ``sensitivity``/``specificity`` are the site's figures (not the manifest's validation
    figures); ``calibration`` keeps the rest of the record for reports.
    """

    site: str = ""
    calibration: SiteCalibration | None = None

    def describe(self) -> str:
        if self.calibration is None:
            return super().describe()
        return f"{self.name} ({self.calibration.summary()})"


@dataclass(frozen=True)
class SitePoint:
    """A named site operating point: one calibration per finding model."""

    name: str
    calibrations: tuple[SiteCalibration, ...] = ()
    note: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def choice_name(self) -> str:
        return SITE_PREFIX + self.name

    def for_model(self, model_id: str) -> SiteCalibration | None:
        return next((c for c in self.calibrations if c.model_id == model_id), None)

    def point_for(self, manifest: ModelManifest) -> SiteOperatingPoint | None:
        """The site threshold for this exact model; None if the point has no entry for it.

        Raises :class:`ModelError` when the entry was measured on another version or file of
        the model: its threshold means nothing for this one.
        """
        cal = self.for_model(manifest.id)
        if cal is None:
            return None
        if not cal.matches(manifest):
            raise ModelError(
                f"site operating point {self.choice_name} was calibrated on {cal.model_label()}, "
                f"but the installed model is {manifest.id} {manifest.version} (sha256 "
                f"{manifest.sha256[:12]}): a new model version needs a new calibration "
                "(medscreen calibrate, or Tools → Calibrate for this site)"
            )
        return SiteOperatingPoint(
            name=self.choice_name,
            threshold=cal.threshold,
            sensitivity=cal.sensitivity,
            specificity=cal.specificity,
            site=self.name,
            calibration=cal,
        )

    def valid_for(self, manifests: Mapping[str, ModelManifest]) -> bool:
        """True when it calibrates at least one of these models and none of them is stale."""
        matched = False
        for manifest in manifests.values():
            if manifest.role != "finding":
                continue
            cal = self.for_model(manifest.id)
            if cal is None:
                continue
            if not cal.matches(manifest):
                return False
            matched = True
        return matched

    def with_calibration(self, cal: SiteCalibration) -> SitePoint:
        """This point with ``cal`` replacing any earlier calibration of the same model."""
        kept = tuple(c for c in self.calibrations if c.model_id != cal.model_id)
        return replace(self, calibrations=(*kept, cal))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "note": self.note,
            "calibrations": [c.to_dict() for c in self.calibrations],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> SitePoint:
        where = str(path) if path else "site point"
        try:
            if data.get("schema") != SCHEMA:
                raise ValueError(f"it is not a MedScreen site operating point ({SCHEMA})")
            if data.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(
                    f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
                )
            cals = tuple(SiteCalibration.from_dict(c) for c in data["calibrations"])
            if not cals:
                raise ValueError("it holds no calibration")
            if len({c.model_id for c in cals}) != len(cals):
                raise ValueError("it holds two calibrations of the same model")
            return cls(normalize_name(str(data["name"])), cals, str(data.get("note", "")), path)
        except SitePointError:
            raise
        except KeyError as exc:
            raise SitePointError(f"{where} is not a valid site point: missing field {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise SitePointError(f"{where} is not a valid site point: {exc}") from exc


def site_calibration(
    manifest: ModelManifest,
    calibration: Calibration,
    point: PointStats | None = None,
    *,
    calibrated_at: str,
    calibrated_by: str = "",
    source: str = "",
    n_excluded: int = 0,
    app_version: str = "",
) -> SiteCalibration:
    """Freeze a calibration (at its chosen point, or one moved along the curve) for saving."""
    chosen = point or calibration.chosen
    manual = point is not None and point.threshold != calibration.chosen.threshold
    c = chosen.confusion
    return SiteCalibration(
        model_id=manifest.id,
        model_version=manifest.version,
        model_sha256=manifest.sha256,
        model_name=manifest.name,
        threshold=float(chosen.threshold),
        chosen_by="manual" if manual else "target",
        target_sensitivity=calibration.target_sensitivity,
        sensitivity=float(chosen.sensitivity),
        sensitivity_ci=chosen.sensitivity_ci,
        specificity=float(chosen.specificity),
        specificity_ci=chosen.specificity_ci,
        auc=calibration.auc,
        auc_ci=calibration.auc_ci,
        n_positive=calibration.n_positive,
        n_negative=calibration.n_negative,
        n_excluded=n_excluded,
        tp=c.tp,
        fn=c.fn,
        fp=c.fp,
        tn=c.tn,
        calibrated_at=calibrated_at,
        calibrated_by=calibrated_by,
        source=source,
        app_version=app_version,
        bootstrap_resamples=calibration.resamples,
        bootstrap_seed=calibration.seed,
        warnings=calibration.warnings if not manual else (),
    )


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a power cut leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_site_point(path: Path) -> SitePoint:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SitePointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SitePointError(f"{path} is not a site point (not valid JSON: {exc})") from exc
    if not isinstance(data, dict):
        raise SitePointError(f"{path} is not a site point (not a JSON object)")
    return SitePoint.from_dict(data, Path(path))


class SitePointStore:
    """The folder of saved site points (``<user data>/site_points``), one JSON file each."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.problems: list[str] = []

    @classmethod
    def default(cls) -> SitePointStore:
        return cls(user_data_dir() / "site_points")

    def _path(self, name: str) -> Path:
        return self.folder / f"{normalize_name(name)}.json"

    def points(self) -> list[SitePoint]:
        """Every readable saved point, by name; unreadable files are noted in ``problems``."""
        self.problems = []
        if not self.folder.is_dir():
            return []
        points = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                points.append(read_site_point(path))
            except SitePointError as exc:
                self.problems.append(str(exc))
                log.warning("skipping a site point file: %s", exc)
        return sorted(points, key=lambda p: p.name.casefold())

    def get(self, name: str) -> SitePoint | None:
        wanted = normalize_name(name).casefold()
        return next((p for p in self.points() if p.name.casefold() == wanted), None)

    def require(self, name: str) -> SitePoint:
        point = self.get(name)
        if point is None:
            known = ", ".join(p.choice_name for p in self.points()) or "none saved yet"
            raise SitePointError(
                f"there is no site operating point {SITE_PREFIX}{normalize_name(name)} "
                f"(saved: {known}); create one with 'medscreen calibrate' or import one"
            )
        return point

    def save(self, point: SitePoint) -> SitePoint:
        existing = self.get(point.name)
        path = self._path(point.name)
        _write_json(path, point.to_dict())
        if existing is not None and existing.path is not None and existing.path.name != path.name:
            existing.path.unlink(missing_ok=True)  # the same name in other case: keep one file
        log.info("saved site operating point %s to %s", point.choice_name, path)
        return replace(point, path=path)

    def add_calibration(self, name: str, cal: SiteCalibration, note: str = "") -> SitePoint:
        """Add (or replace) one model's calibration in the point ``name``, creating it."""
        point = self.get(name) or SitePoint(normalize_name(name), (), note)
        return self.save(point.with_calibration(cal))

    def delete(self, name: str) -> None:
        point = self.require(name)
        if point.path is not None:
            point.path.unlink(missing_ok=True)

    def export(self, name: str, dest: Path) -> Path:
        """Write the point as a standalone JSON file (the same format as the store's)."""
        point = self.require(name)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / f"{point.name}.json"
        try:
            _write_json(dest, point.to_dict())
        except OSError as exc:
            raise SitePointError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        return dest

    def import_file(
        self, path: Path, *, name: str | None = None, overwrite: bool = False
    ) -> SitePoint:
        """Add a point exported elsewhere; refuses to overwrite a different point silently."""
        point = read_site_point(Path(path))
        if name:
            point = SitePoint(normalize_name(name), point.calibrations, point.note)
        existing = self.get(point.name)
        if existing is not None and existing.to_dict() != point.to_dict() and not overwrite:
            raise SitePointError(
                f"a different site point {point.choice_name} is already saved; import it under "
                "another name or replace it"
            )
        return self.save(SitePoint(point.name, point.calibrations, point.note))

    def valid_for(self, manifests: Mapping[str, ModelManifest]) -> list[SitePoint]:
        """The points usable with these exact model versions (what the GUI offers)."""
        return [p for p in self.points() if p.valid_for(manifests)]
