"""Finds, verifies and loads the screening models.

Models come from the bundled ``assets/models/`` and from the user's models folder; a user
model replaces a bundled one with the same id. Every manifest is validated and every model
file is checked against its sha256 before ONNX Runtime sees it: a tampered or damaged file is
refused with a message that says which file and why, never run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from desktop.engine.errors import BatchError, ModelError
from desktop.engine.inference import Device, DeviceReport, OnnxModel, create_session
from desktop.engine.manifest import ModelManifest, load_verified_model, read_manifest
from desktop.engine.paths import bundled_models_dir, user_models_dir

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
    """The modality gate and the finding models, loaded and verified, ready to run."""

    modality: LoadedModel
    findings: dict[str, LoadedModel]
    device: DeviceReport
    problems: list[str] = field(default_factory=list)

    @property
    def manifests(self) -> dict[str, ModelManifest]:
        out = {self.modality.manifest.id: self.modality.manifest}
        out.update({k: v.manifest for k, v in self.findings.items()})
        return out

    @property
    def key(self) -> str:
        """Identifies the exact model versions: results are cached per scan and per key."""
        return "|".join(m.key for m in self.manifests.values())


def _outputs_of(manifest: ModelManifest) -> list[str]:
    names = [manifest.probabilities_output]
    if manifest.activation_output:
        names.append(manifest.activation_output)
    if manifest.ood:
        names.append(manifest.ood.output)
    return names


def load_model(
    manifest: ModelManifest, device: Device, threads: int | None = None
) -> tuple[LoadedModel, DeviceReport]:
    data = load_verified_model(manifest)
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

    A user model that fails verification is refused with a warning and the bundled model of
    the same id, if any, is used instead, so one bad download does not stop a clinic.
    """
    folders = list(dirs) if dirs is not None else default_model_dirs()
    problems: list[str] = []
    candidates: dict[str, list[ModelManifest]] = {}
    for folder in folders:
        found = discover_manifests([folder])
        problems.extend(found.problems)
        for manifest in found.manifests.values():
            candidates.setdefault(manifest.id, []).insert(0, manifest)  # later folders first

    loaded: dict[str, LoadedModel] = {}
    reports: list[DeviceReport] = []
    for model_id, options in candidates.items():
        for manifest in options:
            try:
                model, report = load_model(manifest, device, threads)
            except ModelError as exc:
                problems.append(str(exc))
                log.warning("model refused: %s", exc)
                continue
            loaded[model_id] = model
            reports.append(report)
            break

    gates = [m for m in loaded.values() if m.manifest.role == "modality"]
    findings = {k: m for k, m in loaded.items() if m.manifest.role == "finding"}
    where = ", ".join(str(f) for f in folders)
    detail = ("; ".join(problems)) if problems else "no model manifests found"
    if len(gates) != 1:
        raise BatchError(
            f"expected exactly one modality (gate) model in {where}, found {len(gates)}: {detail}"
        )
    if not findings:
        raise BatchError(f"no finding model (tuberculosis, pneumonia) could be loaded: {detail}")
    device_report = _combine(reports, device)
    return ModelSet(gates[0], dict(sorted(findings.items())), device_report, problems)


def _combine(reports: list[DeviceReport], device: Device) -> DeviceReport:
    providers = {r.provider for r in reports}
    if len(providers) == 1:
        return reports[0]
    notes = "; ".join(sorted({r.note for r in reports if r.note}))
    return DeviceReport(device, "mixed: " + ", ".join(sorted(providers)), notes)


def summarize(manifests: Mapping[str, ModelManifest]) -> list[str]:
    """One line per model for the CLI and the About dialog."""
    return [f"{m.id} {m.version} ({m.name}) sha256 {m.sha256[:12]}" for m in manifests.values()]
