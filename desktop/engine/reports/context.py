"""What a report needs to know besides the results: who, when, with which models and settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from desktop.engine.clock import local_text
from desktop.engine.decisions import ReaderDecision, scan_key
from desktop.engine.manifest import ModelManifest, OperatingPoint
from desktop.engine.patients import PatientChoice
from desktop.engine.results import ScanResult, ScopeRule, ThresholdChoice, scan_points
from desktop.engine.site_points import SiteCalibration, SiteOperatingPoint

if TYPE_CHECKING:
    from desktop.engine.registry import ModelSet, ModelSetPlan


@dataclass(frozen=True)
class ReportContext:
    """The batch-level facts every report format states.

    ``manifests`` maps model id to manifest (``modality``, ``tb``, ``pneumonia`` today); the
    finding models among them, in this order, become the report's score/flag columns.
    ``include_identifiers`` is off by default: patient names, ids, birth dates, study dates and
    study descriptions (``scan.IDENTIFYING_FIELDS``) stay out of every report unless the user
    explicitly asks for them. ``patients`` is the staff's
    patient group for the batch and per scan: with the manifests' scopes it decides which
    scores stand outside their model's scope (never flagged; the report says why).
    """

    batch_id: str | None
    created_at: datetime  # aware, UTC
    app_version: str
    manifests: Mapping[str, ModelManifest]
    choice: ThresholdChoice
    device: str
    clinic_name: str = ""
    operator: str = ""
    include_identifiers: bool = False
    title: str = "Chest X-ray screening report"
    patients: PatientChoice = field(default_factory=PatientChoice)
    #: The readers' recorded decisions, by :func:`~desktop.engine.decisions.scan_key`.
    decisions: Mapping[str, ReaderDecision] = field(default_factory=dict)
    #: Patient IDs typed for files that carry none (shown only with ``include_identifiers``).
    typed_patient_ids: Mapping[str, str] = field(default_factory=dict)
    #: Files of the batch never screened because it was stopped before the end (Ctrl-C, a
    #: crash, a power cut); 0 for a finished batch. Its report says so on page 1 and in the
    #: JSON: otherwise a filed report of 48 scans reads as the whole folder of 201.
    files_not_screened: int = 0
    #: The batch is still being screened by a live process (an export mid-run): the files
    #: not screened are not left behind by a stop, and resuming it is refused meanwhile.
    still_being_screened: bool = False
    #: The command that continues a stopped batch with the same store and outputs (the
    #: command line's; the window's reports point to its History instead). Empty: the report
    #: names the bare ``medscreen resume ID``, which looks in the default store only.
    resume_command: str = ""
    #: The report holds only the scans a reader selected, out of this many in the batch's
    #: table (the window's *Export selected rows*); 0: every scan. Page 1 and the JSON say
    #: so: a report of 2 selected rows of 15 read as a whole batch of 2, none flagged.
    selected_from: int = 0
    #: Files of the batch with the same content as another of its files (a scan copied or
    #: exported twice): each is its own row and counted; page 1 and the JSON say how many.
    same_content_copies: int = 0

    @classmethod
    def for_batch(
        cls,
        batch_id: str | None,
        models: ModelSet | ModelSetPlan,
        choice: ThresholdChoice,
        *,
        clinic_name: str = "",
        operator: str = "",
        include_identifiers: bool = False,
        patients: PatientChoice | None = None,
        decisions: Mapping[str, ReaderDecision] | None = None,
        typed_patient_ids: Mapping[str, str] | None = None,
        files_not_screened: int = 0,
        device: str | None = None,
        still_being_screened: bool = False,
        resume_command: str = "",
        selected_from: int = 0,
        same_content_copies: int = 0,
    ) -> ReportContext:
        """The context of a report written now, by this build, with ``models``.

        The one way the CLI and the window build it, so both state the same facts (time in
        UTC, app version, the device the models really ran on). ``device``: the device the
        batch ran on as its process recorded it (the store's batch row); by default the
        device of ``models``' own sessions (a plan has none, and says so).
        """
        from desktop import __version__

        return cls(
            batch_id=batch_id,
            created_at=datetime.now(UTC),
            app_version=__version__,
            manifests=models.manifests,
            choice=choice,
            device=device if device else models.describe_device(),
            clinic_name=clinic_name,
            operator=operator,
            include_identifiers=include_identifiers,
            patients=patients or PatientChoice(),
            decisions=dict(decisions or {}),
            typed_patient_ids=dict(typed_patient_ids or {}),
            files_not_screened=files_not_screened,
            still_being_screened=still_being_screened,
            resume_command=resume_command,
            selected_from=selected_from,
            same_content_copies=same_content_copies,
        )

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            # A naive time would be printed as if it were UTC on one PC and local on another.
            raise ValueError("ReportContext.created_at must be timezone-aware (UTC)")

    def decision_of(self, result: ScanResult) -> ReaderDecision | None:
        """The reader's recorded decision on ``result`` (None: not decided)."""
        return self.decisions.get(scan_key(result.sha256, result.file))

    def patient_id_of(self, result: ScanResult) -> str:
        """The file's patient ID, else the one typed for it; call only when opted in."""
        own = result.metadata.get("patient_id")
        if own not in (None, ""):
            return str(own)
        return self.typed_patient_ids.get(scan_key(result.sha256, result.file), "")

    def local_time_text(self) -> str:
        """When the report was made, in this PC's local time with the UTC offset written out
        (``2026-12-01 16:40 (UTC+03:00)``): a clinic files it by its own clock, and the offset
        keeps it unambiguous."""
        return local_text(self.created_at)

    @property
    def unsigned_models(self) -> tuple[str, ...]:
        """Ids of models loaded without a verified signature (``MEDSCREEN_ALLOW_UNSIGNED_MODELS``).

        Every report format states them, so a developer's run is never taken for a release's.
        """
        return tuple(mid for mid, m in self.manifests.items() if m.unsigned)

    @property
    def finding_ids(self) -> tuple[str, ...]:
        """Ids of the finding models, in manifest order: the report's score/flag columns."""
        return tuple(mid for mid, m in self.manifests.items() if m.role == "finding")

    @cached_property
    def scope_rule(self) -> ScopeRule:
        """The engine's scope rule for this report's models and patient choice."""
        return ScopeRule.of(self.manifests, self.patients)

    @property
    def finding_manifests(self) -> dict[str, ModelManifest]:
        return {mid: self.manifests[mid] for mid in self.finding_ids}

    def points(self) -> dict[str, OperatingPoint]:
        """Each finding model's resolved operating point (raises ModelError if it has none)."""
        return {mid: self.choice.resolve(m) for mid, m in self.finding_manifests.items()}

    def scan_points(self, result: ScanResult) -> dict[str, OperatingPoint]:
        """Each finding model's point for one scan: its patient group's own where the
        manifest chose the point per group (the engine's :func:`scan_points`)."""
        points = scan_points(result, self.points(), self.scope_rule)
        return {mid: p for mid, p in points.items() if p is not None}

    def site_calibrations(self) -> dict[str, SiteCalibration]:
        """The site calibration behind each model's threshold, for models that use one.

        Every report states it (date, n, CIs): a site threshold is only as good as the
        labelled scans it was set on, and the reader must be able to see that.
        """
        return {
            mid: p.calibration
            for mid, p in self.points().items()
            if isinstance(p, SiteOperatingPoint) and p.calibration is not None
        }

    def site_calibration_lines(self) -> list[str]:
        """``tb: site:NAME — threshold …, calibrated … on n scans`` per calibrated model."""
        points = self.points()
        return [
            f"{mid}: {points[mid].name} — {cal.summary()}"
            for mid, cal in self.site_calibrations().items()
        ]

    def operating_point_label(self) -> str:
        """A short name for the operating point: ``screening``, ``custom 0.4``, or per model."""
        if self.choice.threshold is not None:
            return self.choice.label()
        names = {mid: p.name for mid, p in self.points().items()}
        distinct = set(names.values())
        if len(distinct) <= 1:
            return next(iter(distinct), self.choice.label())
        return "; ".join(f"{mid}: {name}" for mid, name in names.items())


def report_file_stem(clinic_name: str, created_at: datetime, batch_id: str | None) -> str:
    """The default report name: ``medscreen-<clinic>-<date>-<batch>`` (no extension).

    The clinic is reduced to lower-case ASCII letters, digits and dashes (a name that must
    travel by e-mail and USB stick); the date is the local date; the batch is the first 8
    characters of its id. Parts that are empty are left out.
    """
    import re
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", clinic_name).encode("ascii", "ignore").decode()
    clinic = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40].strip("-")
    parts = ["medscreen", clinic, f"{created_at.astimezone():%Y-%m-%d}", (batch_id or "")[:8]]
    return "-".join(p for p in parts if p)
