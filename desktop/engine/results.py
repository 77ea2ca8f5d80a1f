"""What screening produces for one file, and the rules every face applies to it.

This module is the one home of the rules the CLI, the window and the reports all show
(ARCHITECTURE.md, "Where each rule lives"):

* **the flag rule** — :func:`is_flagged` / :func:`finding_flags` / :func:`flags_for`;
* **the status words** — :data:`STATUS_TEXT`;
* **the counts** — :class:`BatchCounts`, built from any iterable of results and an operating
  point;
* **scope** — :class:`ScopeRule`: a model applied outside the scope its manifest states (a
  child for an adults-only model) keeps its score but raises no flag. The patient group it
  rests on is decided at display/report time from the stored metadata and image estimate
  plus the staff's :class:`~desktop.engine.patients.PatientChoice`, like the flags.

Flags are never stored: a result keeps probabilities, and the flag rule applies the operating
point chosen at display or report time, so changing it needs no re-run. A change to any of
these rules is made here, and every face follows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from desktop.engine.errors import ModelError
from desktop.engine.manifest import ModelManifest, OperatingPoint
from desktop.engine.patients import (
    GroupDecision,
    GroupEstimate,
    PatientChoice,
    ScopeVerdict,
    adult_age_of,
    decide_group,
    scope_verdict,
)
from desktop.engine.site_points import SitePoint, SitePointError, SitePointStore, is_site_choice

log = logging.getLogger(__name__)

#: Longest side, in pixels, of the thumbnail kept with every result.
THUMBNAIL_SIZE = 384


class ScanStatus(StrEnum):
    OK = "ok"  # screened by every finding model
    NOT_CHEST_XRAY = "not_chest_xray"  # the modality gate refused it; reason says why
    ERROR = "error"  # could not be read or screened; reason says why


#: The words every face shows for a status: the table's Status column, the PDF, the viewer.
#: The CSV and JSON keep the stable codes (``ScanStatus`` values) for programs.
STATUS_TEXT: Mapping[ScanStatus, str] = {
    ScanStatus.OK: "Screened",
    ScanStatus.NOT_CHEST_XRAY: "Not a chest X-ray",
    ScanStatus.ERROR: "Error",
}


def status_text(status: ScanStatus | str) -> str:
    """The human wording of ``status`` (the code itself for one this build does not know)."""
    try:
        return STATUS_TEXT[ScanStatus(status)]
    except (KeyError, ValueError):
        return str(status)


@dataclass(frozen=True)
class FindingResult:
    """One finding model's output for one scan."""

    model_id: str
    model_key: str
    probability: float  # of the manifest's positive label, calibrated
    probabilities: dict[str, float]
    activation: np.ndarray | None = None  # the raw class activation map (model grid)


@dataclass(frozen=True)
class ScanResult:
    """Everything known about one input file after screening.

    ``metadata`` holds the scan's metadata *including* patient identifiers; writers must use
    :meth:`public_metadata` unless the user opted in to identifiers.
    """

    file: str
    sha256: str | None
    status: ScanStatus
    reason: str = ""
    error_code: str | None = None
    modality: str | None = None
    modality_score: float | None = None
    modality_probabilities: dict[str, float] = field(default_factory=dict)
    ood_score: float | None = None
    findings: dict[str, FindingResult] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    metadata: dict[str, object] = field(default_factory=dict)
    models_key: str = ""
    screened_at: str = ""  # ISO 8601, UTC
    #: A small grey JPEG (longest side THUMBNAIL_SIZE; older stores hold PNGs, and
    #: every reader opens both) kept so reports, the table and the heatmap overlay work
    #: even when the original file has moved or gone. The field keeps its historical name.
    thumbnail_png: bytes | None = field(default=None, repr=False)
    #: The patient-group model's child/adult estimate (None: no such model, or not a chest)
    group_estimate: GroupEstimate | None = None

    def public_metadata(self) -> dict[str, object]:
        from desktop.engine.scan import IDENTIFYING_FIELDS

        return {k: v for k, v in self.metadata.items() if k not in IDENTIFYING_FIELDS}


#: What an operating point may be, as the CLI's help says it: the shipped finding models'
#: named points, a custom threshold, or a saved site point.
ACCEPTED_POINTS = "screening, balanced, a threshold from 0 to 1, or site:NAME"


@dataclass(frozen=True)
class ThresholdChoice:
    """The user's operating point: a manifest point by name, or one custom threshold.

    A name is resolved per model (each model brings its own thresholds); a number applies to
    every finding model. ``site:NAME`` is a site operating point (:mod:`site_points`): its
    saved record is read once, when the choice is made, and travels in ``site``; each model
    resolves to its site threshold if the point calibrated that exact model version, to its
    manifest default if the point has no calibration for it, and fails (ModelError) if the
    point was calibrated on another version of it.
    """

    name: str | None = None
    threshold: float | None = None
    site: SitePoint | None = field(default=None, repr=False)
    #: A choice per model id (issue 14): ``tb=balanced,pneumonia=0.6``; a model not named
    #: gets its manifest default. Each entry is a named, custom or site choice itself.
    per_model: Mapping[str, ThresholdChoice] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, text: str | None, sites: SitePointStore | None = None) -> ThresholdChoice:
        """``None``/``""`` → each model's default; ``"0.4"`` → custom; ``"balanced"`` → named;
        ``"site:NAME"`` → the saved site point (ValueError if there is none by that name);
        ``"tb=balanced,pneumonia=0.6"`` → one of those per model."""
        if not text:
            return cls()
        if "=" in text:
            per_model: dict[str, ThresholdChoice] = {}
            for part in text.split(","):
                model_id, sep, spec = (x.strip() for x in part.partition("="))
                if sep and model_id and not spec:  # "tb=": say what is missing
                    raise ValueError(
                        f"no operating point after '{model_id}=' in {text!r}: give one, "
                        f"e.g. {model_id}=balanced ({ACCEPTED_POINTS})"
                    )
                if not sep or not model_id or not spec or "=" in spec:
                    raise ValueError(
                        f"expected MODEL=POINT in {text!r}, got {part.strip()!r} "
                        f"(POINT: {ACCEPTED_POINTS})"
                    )
                if model_id in per_model:  # which one was meant? (the last silently won)
                    raise ValueError(f"{model_id} is given two operating points in {text!r}")
                per_model[model_id] = cls.parse(spec, sites)
            return cls(per_model=per_model)
        if is_site_choice(text):
            try:
                point = (sites or SitePointStore.default()).require(text)
            except SitePointError as exc:
                raise ValueError(str(exc)) from exc
            return cls(name=point.choice_name, site=point)
        try:
            value = float(text)
        except ValueError:
            return cls(name=text)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a custom threshold must be at least 0 and at most 1, got {value:g}")
        return cls(threshold=value + 0.0)  # "-0" is 0: never printed as "-0.000"

    def resolve(self, manifest: ModelManifest) -> OperatingPoint:
        if self.per_model:
            own = self.per_model.get(manifest.id)
            return own.resolve(manifest) if own is not None else manifest.operating_point(None)
        if self.threshold is not None:
            return OperatingPoint(name="custom", threshold=self.threshold)
        if self.site is not None:
            return self.site.point_for(manifest) or manifest.operating_point(None)
        if is_site_choice(self.name):
            raise ModelError(f"site operating point {self.name} was not loaded")
        return manifest.operating_point(self.name)

    def text(self) -> str:
        """The choice as :meth:`parse` reads it (settings files, policy files, the CLI)."""
        if self.per_model:
            return ",".join(f"{mid}={c.text()}" for mid, c in self.per_model.items())
        if self.threshold is not None:
            return f"{self.threshold:g}"
        return self.name or ""

    def label(self) -> str:
        if self.per_model:
            return "; ".join(f"{mid}: {c.label()}" for mid, c in self.per_model.items())
        if self.threshold is not None:
            return f"custom {self.threshold:g}"
        return self.name or "default"


def is_flagged(probability: float, point: OperatingPoint) -> bool:
    """The flag rule: a finding is flagged when its positive probability reaches the threshold.

    ``point`` is the one that applies to the scan (:func:`scan_points`): where the manifest
    chose the point per patient group, that group's threshold."""
    return probability >= point.threshold


def operating_points(
    manifests: Mapping[str, ModelManifest], choice: ThresholdChoice, *, strict: bool = True
) -> dict[str, OperatingPoint | None]:
    """Each finding model's operating point under ``choice``, in ``manifests`` order.

    ``strict`` (reports, CLI) raises :class:`ModelError` for a model without the named point,
    so nothing is written under a point that does not exist; otherwise (the window, where the
    user is still choosing) that model gets ``None`` and shows no flag.
    """
    points: dict[str, OperatingPoint | None] = {}
    for model_id, manifest in manifests.items():
        if manifest.role != "finding":
            continue
        try:
            points[model_id] = choice.resolve(manifest)
        except ModelError as exc:
            if strict:
                raise
            log.warning("operating point %s: %s", choice.label(), exc)
            points[model_id] = None
    return points


@dataclass(frozen=True)
class ScopeRule:
    """Which models a scan is outside the scope of, under the staff's patient choice.

    Built from the loaded manifests (each finding model's ``scope``; the patient-group
    model's child/adult age boundary) and :class:`PatientChoice`. Nothing model-specific is
    written here: a new manifest scope changes the verdicts with no code change.
    """

    manifests: Mapping[str, ModelManifest]  # the finding models
    patients: PatientChoice = field(default_factory=PatientChoice)
    adult_age: float = 18.0

    @classmethod
    def of(
        cls, manifests: Mapping[str, ModelManifest], patients: PatientChoice | None = None
    ) -> ScopeRule:
        """The rule for ``manifests`` (any roles; the finding ones are judged)."""
        return cls(
            manifests={k: m for k, m in manifests.items() if m.role == "finding"},
            patients=patients or PatientChoice(),
            adult_age=adult_age_of(manifests),
        )

    def group(self, result: ScanResult) -> GroupDecision:
        """The scan's patient group and where it came from (staff, file, image)."""
        return decide_group(
            result.sha256, result.metadata, result.group_estimate, self.patients, self.adult_age
        )

    def verdicts(self, result: ScanResult) -> dict[str, ScopeVerdict]:
        """The models that ran on ``result`` outside their scope, with the reason for each."""
        if not result.findings:
            return {}
        decision = self.group(result)
        view = result.metadata.get("view_position")
        out: dict[str, ScopeVerdict] = {}
        for model_id, manifest in self.manifests.items():
            if model_id not in result.findings:
                continue
            verdict = scope_verdict(manifest, decision, view, self.adult_age)
            if verdict is not None:
                out[model_id] = verdict
        return out


def scan_points(
    result: ScanResult,
    points: Mapping[str, OperatingPoint | None],
    scope: ScopeRule | None = None,
) -> dict[str, OperatingPoint | None]:
    """The operating point each model applies to this scan: for a point the manifest chose
    per patient group (``by_group``), the point of the scan's group under ``scope`` (staff,
    file or image, :meth:`ScopeRule.group`); the point itself when the group is unknown, the
    point has no groups (a custom or site threshold), or no scope is given. Every face that
    shows a threshold or a margin for one scan takes it from here, so the flag and the
    number beside it cannot disagree."""
    if scope is None or not any(p is not None and p.by_group for p in points.values()):
        return dict(points)
    group = scope.group(result).group
    name = group.value if group is not None else None
    return {mid: None if p is None else p.for_group(name) for mid, p in points.items()}


def finding_flags(
    result: ScanResult,
    points: Mapping[str, OperatingPoint | None],
    scope: ScopeRule | None = None,
) -> dict[str, bool | None]:
    """Each model's flag for ``result`` under resolved ``points``, in their order.

    ``None`` where the model did not run on this scan (refused, unreadable) or has no point;
    ``False`` where it ran outside its scope under ``scope`` (the score stands, the flag does
    not). Each point is the scan's own under ``scope`` (:func:`scan_points`: per patient
    group where the manifest chose one). Every face passes its :class:`ScopeRule`; ``None``
    judges no scope and uses each point's default threshold (tests of the threshold rule).
    """
    outside = scope.verdicts(result) if scope is not None else {}
    out: dict[str, bool | None] = {}
    for model_id, point in scan_points(result, points, scope).items():
        finding = result.findings.get(model_id)
        if finding is None or point is None:
            out[model_id] = None
        else:
            out[model_id] = model_id not in outside and is_flagged(finding.probability, point)
    return out


def flags_for(
    result: ScanResult,
    manifests: Mapping[str, ModelManifest],
    choice: ThresholdChoice,
    patients: PatientChoice | None = None,
) -> dict[str, bool | None]:
    """Each finding model's flag for ``result`` (None where the model did not run), with the
    scope rule of ``manifests`` under ``patients`` (automatic when None)."""
    return finding_flags(
        result, operating_points(manifests, choice), ScopeRule.of(manifests, patients)
    )


def any_flagged(flags: Mapping[str, bool | None]) -> bool:
    """A scan is flagged when any finding model flags it."""
    return any(bool(flag) for flag in flags.values())


@dataclass(frozen=True)
class BatchCounts:
    """The totals every face states for a set of results: CLI summary, window, reports.

    Build it with :meth:`of` (manifests + choice) or :meth:`tally` (resolved points); counts
    of two chunks add up with ``+``, so a table can count rows as they arrive.
    """

    total: int = 0
    screened: int = 0
    not_chest_xray: int = 0
    errors: int = 0
    flagged: Mapping[str, int] = field(default_factory=dict)  # per finding model id
    flagged_any: int = 0
    #: scans a model ran on outside its scope (never flagged by it), per model and in all
    outside_scope: Mapping[str, int] = field(default_factory=dict)
    outside_scope_any: int = 0

    @classmethod
    def of(
        cls,
        results: Iterable[ScanResult],
        manifests: Mapping[str, ModelManifest],
        choice: ThresholdChoice,
        patients: PatientChoice | None = None,
    ) -> BatchCounts:
        """Count ``results`` at ``choice`` under the scope rule of ``manifests`` and
        ``patients`` (raises ModelError for an unknown point)."""
        return cls.tally(
            results, operating_points(manifests, choice), ScopeRule.of(manifests, patients)
        )

    @classmethod
    def tally(
        cls,
        results: Iterable[ScanResult],
        points: Mapping[str, OperatingPoint | None],
        scope: ScopeRule | None = None,
    ) -> BatchCounts:
        """Count ``results`` under already-resolved ``points`` (one pass; any iterable)."""
        by_status = dict.fromkeys(ScanStatus, 0)
        flagged = dict.fromkeys(points, 0)
        outside = dict.fromkeys(points, 0)
        flagged_any = total = outside_any = 0
        for result in results:
            total += 1
            by_status[result.status] = by_status.get(result.status, 0) + 1
            verdicts = scope.verdicts(result) if scope is not None else {}
            flags = finding_flags(result, scan_points(result, points, scope))
            for model_id in verdicts:
                if model_id in flags:
                    flags[model_id] = False
                    outside[model_id] += 1
            outside_any += bool(verdicts)
            for model_id, flag in flags.items():
                flagged[model_id] += bool(flag)
            flagged_any += any_flagged(flags)
        return cls(
            total=total,
            screened=by_status[ScanStatus.OK],
            not_chest_xray=by_status[ScanStatus.NOT_CHEST_XRAY],
            errors=by_status[ScanStatus.ERROR],
            flagged=flagged,
            flagged_any=flagged_any,
            outside_scope=outside,
            outside_scope_any=outside_any,
        )

    def __add__(self, other: BatchCounts) -> BatchCounts:
        flagged = dict(self.flagged)
        for model_id, n in other.flagged.items():
            flagged[model_id] = flagged.get(model_id, 0) + n
        outside = dict(self.outside_scope)
        for model_id, n in other.outside_scope.items():
            outside[model_id] = outside.get(model_id, 0) + n
        return BatchCounts(
            total=self.total + other.total,
            screened=self.screened + other.screened,
            not_chest_xray=self.not_chest_xray + other.not_chest_xray,
            errors=self.errors + other.errors,
            flagged=flagged,
            flagged_any=self.flagged_any + other.flagged_any,
            outside_scope=outside,
            outside_scope_any=self.outside_scope_any + other.outside_scope_any,
        )
