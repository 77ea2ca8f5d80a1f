"""The patient group of a scan (child or adult), where it came from, and model scope.

A finding model is only meaningful for the patients and views it was trained on: the TB
model saw adults, the pneumonia model young children. Its manifest says so (``scope``, see
:class:`~desktop.engine.manifest.Scope`); this module decides, for one scan, whether a model
was applied outside that scope and says why in words a clinic can read.

The group of a scan comes from the first source that has it:

1. **the staff**: a choice for one scan (an override, recorded in the results store with its
   time), then a choice for the whole batch (``--patients adult|child``, the window's
   "Patients" selector);
2. **the file**: DICOM PatientAge, or PatientBirthDate together with StudyDate;
3. **the image**: the child/adult estimate of the ``patient_group`` model, stored with the
   result (:class:`GroupEstimate`).

Nothing here is stored as a verdict: a result keeps its metadata and the image estimate, and
the decision is made at display and report time from those plus the staff's choices, exactly
like flags. Changing the batch's group therefore changes every view at once, with no re-run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum

from desktop.engine.manifest import ModelManifest, Scope, normal_view

#: Age (years) from which a patient counts as an adult when no model says otherwise; the
#: ``patient_group`` model's manifest may set its own (``patient_group.adult_age_years``).
DEFAULT_ADULT_AGE = 18.0


class PatientGroup(StrEnum):
    ADULT = "adult"
    CHILD = "child"


class GroupSource(StrEnum):
    """Where a scan's patient group came from (stable codes for CSV/JSON)."""

    STAFF_SCAN = "staff_scan"  # a staff member set it for this scan
    STAFF_BATCH = "staff_batch"  # a staff member set it for the whole batch
    FILE = "file"  # DICOM PatientAge or PatientBirthDate + StudyDate
    IMAGE = "image"  # estimated from the image by the patient-group model
    UNKNOWN = "unknown"  # none of the above


#: How each source reads in a sentence ("child, estimated from the image").
SOURCE_TEXT: Mapping[GroupSource, str] = {
    GroupSource.STAFF_SCAN: "set by staff for this scan",
    GroupSource.STAFF_BATCH: "set by staff for the batch",
    GroupSource.FILE: "from the file",
    GroupSource.IMAGE: "estimated from the image",
    GroupSource.UNKNOWN: "not known",
}


def parse_group(text: str | None) -> PatientGroup | None:
    """``adult``/``adults``, ``child``/``children`` → the group; ``auto``/empty → None."""
    word = (text or "").strip().lower()
    if word in ("", "auto", "automatic"):
        return None
    if word in ("adult", "adults"):
        return PatientGroup.ADULT
    if word in ("child", "children", "paediatric", "pediatric"):
        return PatientGroup.CHILD
    raise ValueError(f"patient group must be adult, child or auto, got {text!r}")


@dataclass(frozen=True)
class GroupEstimate:
    """The patient-group model's output for one scan, stored with the result."""

    model_key: str
    p_child: float
    threshold: float  # p(child) at or above it: estimated a child (the model's operating point)

    @property
    def group(self) -> PatientGroup:
        return PatientGroup.CHILD if self.p_child >= self.threshold else PatientGroup.ADULT

    def as_dict(self) -> dict[str, object]:
        return {"model_key": self.model_key, "p_child": self.p_child, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> GroupEstimate:
        return cls(
            model_key=str(data["model_key"]),
            p_child=float(data["p_child"]),  # type: ignore[arg-type]
            threshold=float(data["threshold"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class PatientChoice:
    """The staff's say: a group for the whole batch (None = automatic) and per-scan overrides.

    Overrides are keyed by the scan's content hash: the same image is the same patient.
    """

    batch: PatientGroup | None = None
    overrides: Mapping[str, PatientGroup] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> PatientChoice:
        return cls(batch=parse_group(text))

    def with_batch(self, group: PatientGroup | None) -> PatientChoice:
        return replace(self, batch=group)

    def with_override(self, sha256: str, group: PatientGroup | None) -> PatientChoice:
        """This choice with one scan set to ``group`` (None: back to automatic)."""
        overrides = dict(self.overrides)
        if group is None:
            overrides.pop(sha256, None)
        else:
            overrides[sha256] = group
        return replace(self, overrides=overrides)

    def label(self) -> str:
        """``auto``, ``adult`` or ``child``: the batch setting as the CLI writes it."""
        return "auto" if self.batch is None else self.batch.value


@dataclass(frozen=True)
class GroupDecision:
    """A scan's patient group, where it came from, and the age when the file gave one."""

    group: PatientGroup | None
    source: GroupSource
    age_years: float | None = None
    detail: str = ""  # "DICOM PatientAge 004Y", "p(child) 0.97"; never an identifier

    def describe(self) -> str:
        """``child, estimated from the image`` / ``age 4, from the file (DICOM PatientAge)``."""
        if self.group is None:
            return "patient group not known"
        who = self.group.value
        if self.age_years is not None:
            who = f"{who}, age {format_age(self.age_years)}"
        text = f"{who}, {SOURCE_TEXT[self.source]}"
        return f"{text} ({self.detail})" if self.detail else text


def format_age(years: float) -> str:
    """``4`` for 4.3 years; ``8 months`` below one year."""
    if years < 1:
        return f"{max(0, math.floor(years * 12))} months"
    return str(math.floor(years))


#: No patient is older: an age above it is a placeholder (PatientAge 999Y, a birth date of
#: 1900-01-01), not an age.
MAX_PLAUSIBLE_AGE = 120.0


def patient_age_years(age: str | None) -> float | None:
    """Parse DICOM PatientAge (``045Y``, ``006M``, ``010W``, ``003D``) into years.

    ``000Y`` and ages over :data:`MAX_PLAUSIBLE_AGE` are placeholders systems write for an
    unknown age (under a year DICOM counts in days, weeks or months): ``None``, as for no
    age. Taken as real, they put an adult outside every model's ages and took the flags away.
    """
    if not age:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(age).upper())
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2) or "Y"
    years = value / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[unit]
    if (value == 0 and unit == "Y") or years > MAX_PLAUSIBLE_AGE:
        return None
    return years


def _dicom_date(text: object) -> date | None:
    match = re.fullmatch(r"\s*(\d{4})(\d{2})(\d{2})\s*", str(text or ""))
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def age_from_metadata(meta: Mapping[str, object]) -> tuple[float, str] | None:
    """The patient's age in years from the file, and which fields gave it; None if absent.

    PatientAge first; else PatientBirthDate with StudyDate (both needed: the age at the
    study, not today). A date that does not parse, a birth after the study, or an
    implausible age (see :func:`patient_age_years`) is ignored.
    The detail never holds the birth date itself (an identifier).
    """
    raw_age = meta.get("patient_age")
    years = patient_age_years(None if raw_age is None else str(raw_age))
    if years is not None:
        return years, f"DICOM PatientAge {str(raw_age).strip()}"
    born, studied = _dicom_date(meta.get("patient_birth_date")), _dicom_date(meta.get("study_date"))
    if born is None or studied is None or born > studied:
        return None
    years = (studied - born).days / 365.25
    if years > MAX_PLAUSIBLE_AGE:  # a placeholder birth date (1900-01-01)
        return None
    return years, "DICOM PatientBirthDate and StudyDate"


def decide_group(
    sha256: str | None,
    metadata: Mapping[str, object],
    estimate: GroupEstimate | None,
    choice: PatientChoice,
    adult_age: float = DEFAULT_ADULT_AGE,
) -> GroupDecision:
    """A scan's group from the first source that has it: staff (scan, batch), file, image."""
    if sha256 and sha256 in choice.overrides:
        return GroupDecision(choice.overrides[sha256], GroupSource.STAFF_SCAN)
    if choice.batch is not None:
        return GroupDecision(choice.batch, GroupSource.STAFF_BATCH)
    found = age_from_metadata(metadata)
    if found is not None:
        years, how = found
        group = PatientGroup.ADULT if years >= adult_age else PatientGroup.CHILD
        return GroupDecision(group, GroupSource.FILE, age_years=years, detail=how)
    if estimate is not None:
        return GroupDecision(
            estimate.group, GroupSource.IMAGE, detail=f"p(child) {estimate.p_child:.2f}"
        )
    return GroupDecision(None, GroupSource.UNKNOWN)


@dataclass(frozen=True)
class ScopeVerdict:
    """Why a model was applied outside its scope: a short form for the table, the whole reason."""

    model_id: str
    short: str  # "TB: adults only"
    reason: str  # "TB model: adults only; this scan: child, estimated from the image"


def describe_ages(scope: Scope, adult_age: float = DEFAULT_ADULT_AGE) -> str:
    """``adults only`` / ``children only`` / ``ages 1–5`` / ``ages 12 and over``; "" if open."""
    lo, hi = scope.age_min, scope.age_max
    if lo is None and hi is None:
        return ""
    if hi is None and lo == adult_age:
        return "adults only"
    if lo in (None, 0) and hi is not None and hi + 1 == adult_age:
        return "children only"
    if hi is None:
        return f"ages {_num(lo)} and over"
    if lo is None:
        return f"ages up to {_num(hi)}"
    return f"ages {_num(lo)}–{_num(hi)}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _age_in(scope: Scope, years: float) -> bool:
    if scope.age_min is not None and years < scope.age_min:
        return False
    return scope.age_max is None or math.floor(years) <= scope.age_max


def _group_overlaps(scope: Scope, group: PatientGroup, adult_age: float) -> bool:
    """Whether any age of ``group`` lies in the scope (children: below ``adult_age``)."""
    if group is PatientGroup.CHILD:
        return scope.age_min is None or scope.age_min < adult_age
    return scope.age_max is None or scope.age_max >= adult_age


def scope_verdict(
    manifest: ModelManifest,
    decision: GroupDecision,
    view_position: object,
    adult_age: float = DEFAULT_ADULT_AGE,
) -> ScopeVerdict | None:
    """Why ``manifest``'s model is outside its scope for this scan; None when inside.

    Age: a known age (from the file, when no staff choice overrides it) is checked against the
    range; a group alone is outside only when none of its ages are in the range (a child is
    inside a 1–5 scope). Unknown group: inside (nothing to go on). View: the file's
    ViewPosition against the scope's views; no view in the file: inside.
    """
    scope = manifest.scope
    if scope is None or not scope.restricts:
        return None
    name = manifest.short_name
    ages = describe_ages(scope, adult_age)
    if ages and decision.group is not None:
        if decision.age_years is not None and decision.source is GroupSource.FILE:
            inside = _age_in(scope, decision.age_years)
        else:
            inside = _group_overlaps(scope, decision.group, adult_age)
        if not inside:
            return ScopeVerdict(
                manifest.id,
                short=f"{name}: {ages}",
                reason=f"{name} model: {ages}; this scan: {decision.describe()}",
            )
    view = normal_view(str(view_position)) if view_position else ""
    if scope.views and view and view not in scope.views:
        views = "/".join(scope.views)
        return ScopeVerdict(
            manifest.id,
            short=f"{name}: {views} views only",
            reason=f"{name} model: {views} views only; this scan: {view} view (DICOM ViewPosition)",
        )
    return None


def adult_age_of(manifests: Mapping[str, ModelManifest]) -> float:
    """The child/adult boundary of the loaded patient-group model (default 18 years)."""
    for manifest in manifests.values():
        if manifest.role == "patient_group":
            block = manifest.raw.get("patient_group") or {}
            value = block.get("adult_age_years") if isinstance(block, Mapping) else None
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return float(value)
    return DEFAULT_ADULT_AGE
