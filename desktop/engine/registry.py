"""Finds, verifies and loads the screening models.

Models come from the bundled ``assets/models/`` and from the user's models folder. A model
*package* (manifest + ``.onnx``) is used only when it is trusted (:mod:`desktop.engine.trust`):
its manifest carries a valid Ed25519 signature by a key embedded in the app, the model file
matches the manifest's sha256, and, for the bundled folder, the package matches the digest
pinned in :mod:`desktop.engine.pins`. A signed user model replaces a bundled one with the same
id unless it is older; anything unsigned, altered or damaged is refused with a message that
names the file (kept in :attr:`ModelSet.problems` for the CLI and GUI) and the bundled model
is used instead. ``MEDSCREEN_ALLOW_UNSIGNED_MODELS=1`` (developers only) lets a package that
fails verification load, marked ``unsigned`` on every report.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from desktop.engine.errors import BatchError, ModelError
from desktop.engine.inference import Device, DeviceReport, OnnxModel, create_session
from desktop.engine.manifest import ModelManifest, load_verified_model, read_manifest
from desktop.engine.paths import bundled_models_dir, user_models_dir
from desktop.engine.trust import ALLOW_UNSIGNED_ENV, allow_unsigned, check_pin, verify_signature

log = logging.getLogger(__name__)


def default_model_dirs() -> list[Path]:
    """Bundled models first, then the user's (later folders override earlier ones by id)."""
    return [bundled_models_dir(), user_models_dir()]


@dataclass
class Discovery:
    manifests: dict[str, ModelManifest] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def discover_manifests(dirs: Iterable[Path]) -> Discovery:
    """Read every ``*.json`` manifest in ``dirs``; problems are collected, not raised."""
    found = Discovery()
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                manifest = read_manifest(path)
            except ModelError as exc:
                found.problems.append(str(exc))
                log.warning("skipping model manifest: %s", exc)
                continue
            found.manifests[manifest.id] = manifest
    return found


@dataclass
class LoadedModel:
    manifest: ModelManifest
    model: OnnxModel


@dataclass
class ModelSet:
    """The modality gate, the finding models and the optional patient-group model, verified.

    ``findings`` are in display order (each manifest's ``display.order``, then id): the
    order of the table's columns and the reports'. ``patient_group`` estimates child/adult
    from the image when neither the staff nor the file says it; without it such scans have
    no known group.
    """

    modality: LoadedModel
    findings: dict[str, LoadedModel]
    device: DeviceReport
    problems: list[str] = field(default_factory=list)
    patient_group: LoadedModel | None = None

    @property
    def manifests(self) -> dict[str, ModelManifest]:
        out = {self.modality.manifest.id: self.modality.manifest}
        out.update({k: v.manifest for k, v in self.findings.items()})
        if self.patient_group is not None:
            out[self.patient_group.manifest.id] = self.patient_group.manifest
        return out

    @property
    def key(self) -> str:
        """Identifies the exact model versions: results are cached per scan and per key."""
        return "|".join(m.key for m in self.manifests.values())

    @property
    def unsigned(self) -> tuple[str, ...]:
        """Ids of models loaded without verification (developer option): reports say so."""
        return tuple(mid for mid, m in self.manifests.items() if m.unsigned)


def _outputs_of(manifest: ModelManifest) -> list[str]:
    names = [manifest.probabilities_output]
    if manifest.activation_output:
        names.append(manifest.activation_output)
    if manifest.ood:
        names.append(manifest.ood.output)
    return names


def verify_package(manifest: ModelManifest, bundled: bool) -> tuple[ModelManifest, str | None]:
    """Check a package's signature (and, when ``bundled``, its pin); returns it marked.

    Call after :func:`load_verified_model` succeeded: the model bytes then match
    ``manifest.sha256``, which the signature and the pin cover. Raises :class:`ModelError`
    naming the file; under the developer option the package is returned marked ``unsigned``
    with a note saying why, instead.
    """
    if manifest.path is None:
        raise ModelError(f"manifest of {manifest.id} was not read from a file")
    try:
        signer = verify_signature(manifest.raw, manifest.path)
        if bundled:
            check_pin(manifest.raw, manifest.sha256, manifest.path)
    except ModelError as exc:
        if not allow_unsigned():
            raise
        note = (
            f"{exc} — used anyway because {ALLOW_UNSIGNED_ENV} is set; every report is "
            f"marked 'unsigned models'"
        )
        return replace(manifest, unsigned=True), note
    return replace(manifest, signed_by=signer), None


def load_model(
    manifest: ModelManifest,
    device: Device,
    threads: int | None = None,
    *,
    bundled: bool = False,
    problems: list[str] | None = None,
) -> tuple[LoadedModel, DeviceReport]:
    """Verify a package (model bytes, signature, pin when ``bundled``) and open a session.

    Notes about packages accepted only through the developer option go to ``problems``.
    """
    data = load_verified_model(manifest)
    manifest, note = verify_package(manifest, bundled)
    if note is not None:
        log.warning("unsigned model: %s", note)
        if problems is not None:
            problems.append(note)
    session, report = create_session(data, manifest.id, device, threads)
    try:
        model = OnnxModel(session, manifest.input_name, _outputs_of(manifest))
    except ModelError as exc:
        raise ModelError(f"model {manifest.id} ({manifest.file}) {exc}") from exc
    return LoadedModel(manifest, model), report


def load_model_set(
    dirs: Iterable[Path] | None = None,
    device: Device = Device.AUTO,
    threads: int | None = None,
) -> ModelSet:
    """Load the gate and every finding model, verified. Raises BatchError when unusable.

    A user model that fails verification (unsigned, altered, damaged, or older than the
    bundled one) is refused with a warning and the bundled model of the same id, if any, is
    used instead, so one bad download does not stop a clinic and none changes a result
    silently. Packages in the bundled folder must also match their pinned digests.
    """
    folders = list(dirs) if dirs is not None else default_model_dirs()
    bundled_dir = bundled_models_dir().resolve()
    problems: list[str] = []
    candidates: dict[str, list[tuple[ModelManifest, bool]]] = {}
    for folder in folders:
        found = discover_manifests([folder])
        problems.extend(found.problems)
        bundled = folder.resolve() == bundled_dir
        for manifest in found.manifests.values():
            # later folders first
            candidates.setdefault(manifest.id, []).insert(0, (manifest, bundled))

    loaded: dict[str, LoadedModel] = {}
    reports: list[DeviceReport] = []
    for model_id, options in candidates.items():
        for index, (manifest, bundled) in enumerate(options):
            try:
                _refuse_downgrade(manifest, [m for m, _ in options[index + 1 :]])
                model, report = load_model(
                    manifest, device, threads, bundled=bundled, problems=problems
                )
            except ModelError as exc:
                problems.append(str(exc))
                log.warning("model refused: %s", exc)
                continue
            loaded[model_id] = model
            reports.append(report)
            break

    gates = [m for m in loaded.values() if m.manifest.role == "modality"]
    findings = {k: m for k, m in loaded.items() if m.manifest.role == "finding"}
    groups = [m for m in loaded.values() if m.manifest.role == "patient_group"]
    if len(groups) > 1:
        names = ", ".join(m.manifest.id for m in groups)
        problems.append(f"more than one patient-group model ({names}); none is used")
        groups = []
    where = ", ".join(str(f) for f in folders)
    detail = ("; ".join(problems)) if problems else "no model manifests found"
    if len(gates) != 1:
        raise BatchError(
            f"expected exactly one modality (gate) model in {where}, found {len(gates)}: {detail}"
        )
    if not findings:
        raise BatchError(f"no finding model (tuberculosis, pneumonia) could be loaded: {detail}")
    device_report = _combine(reports, device)
    ordered = sorted(findings.items(), key=lambda item: item[1].manifest.display_order)
    return ModelSet(
        gates[0],
        dict(ordered),
        device_report,
        problems,
        patient_group=groups[0] if groups else None,
    )


@dataclass(frozen=True)
class ModelSetPlan:
    """What a :class:`ModelSet` is made of, without its ONNX Runtime sessions: the verified
    manifests in their roles and order, the device asked for and the load's notes. Small and
    picklable, so the batch's own process can open the same set (:func:`reopen_model_set`)."""

    modality: ModelManifest
    findings: tuple[ModelManifest, ...]
    patient_group: ModelManifest | None
    device: Device
    problems: tuple[str, ...] = ()

    @classmethod
    def of(cls, models: ModelSet) -> ModelSetPlan:
        group = models.patient_group
        return cls(
            models.modality.manifest,
            tuple(m.manifest for m in models.findings.values()),
            group.manifest if group is not None else None,
            models.device.requested,
            tuple(models.problems),
        )


def reopen_model_set(plan: ModelSetPlan, threads: int | None = None) -> ModelSet:
    """The model set of ``plan`` opened again, in the batch's own process.

    The window loaded the set and checked each package's signature and pin; the manifests it
    verified travel here in memory, so what is re-checked is what could have changed on disk
    since: each model file is read once and must still match its manifest's sha256 (else
    :class:`ModelError` naming the file). Same device asked for, same order, same
    :attr:`ModelSet.key`.
    """
    reports: list[DeviceReport] = []

    def reopen(manifest: ModelManifest) -> LoadedModel:
        data = load_verified_model(manifest)
        session, report = create_session(data, manifest.id, plan.device, threads)
        reports.append(report)
        try:
            return LoadedModel(
                manifest, OnnxModel(session, manifest.input_name, _outputs_of(manifest))
            )
        except ModelError as exc:
            raise ModelError(f"model {manifest.id} ({manifest.file}) {exc}") from exc

    modality = reopen(plan.modality)
    findings = {m.id: reopen(m) for m in plan.findings}
    group = reopen(plan.patient_group) if plan.patient_group is not None else None
    return ModelSet(
        modality,
        findings,
        _combine(reports, plan.device),
        list(plan.problems),
        patient_group=group,
    )


def _version_tuple(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _refuse_downgrade(manifest: ModelManifest, earlier: list[ModelManifest]) -> None:
    """A model older than one of the same id in an earlier folder (the bundled one) is refused:
    no rollback to an older signed release, whose thresholds were superseded for a reason."""
    if allow_unsigned():
        return
    mine = _version_tuple(manifest.version)
    for other in earlier:
        theirs = _version_tuple(other.version)
        if mine and theirs and mine < theirs:
            raise ModelError(
                f"model package {manifest.path} ({manifest.id} {manifest.version}) is older "
                f"than {other.id} {other.version} in {other.path}; not used"
            )


def _combine(reports: list[DeviceReport], device: Device) -> DeviceReport:
    providers = {r.provider for r in reports}
    if len(providers) == 1:
        return reports[0]
    notes = "; ".join(sorted({r.note for r in reports if r.note}))
    return DeviceReport(device, "mixed: " + ", ".join(sorted(providers)), notes)


def summarize(manifests: Mapping[str, ModelManifest]) -> list[str]:
    """One line per model for the CLI and the About dialog."""
    return [
        f"{m.id} {m.version} ({m.name}) sha256 {m.sha256[:12]}, "
        + ("UNSIGNED (developer option)" if m.unsigned else f"signed by {m.signed_by or '?'}")
        for m in manifests.values()
    ]
