"""Finds, verifies and loads the screening models.

Models come from the bundled ``assets/models/`` and from the user's models folder. A model
*package* (manifest + ``.onnx``) is used only when it is trusted (:mod:`desktop.engine.trust`):
its manifest carries a valid Ed25519 signature by a key embedded in the app, the model file
matches the manifest's sha256, and, for the bundled folder, the package matches the digest
pinned in :mod:`desktop.engine.pins`. A signed user model replaces a bundled one with the same
id unless it is older; anything unsigned, altered or damaged is refused with a message that
names the file (kept in :attr:`ModelSet.problems` for the CLI and GUI) and the bundled model
is used instead; so is a signed user model that ONNX Runtime then cannot open
(:func:`open_model_set`; reported as a :class:`RefusedPackage`, which a later plan is given
to skip that very package at once). ``MEDSCREEN_ALLOW_UNSIGNED_MODELS=1`` (developers only)
lets a package that fails verification load, marked ``unsigned`` on every report.

Two steps, one path: :func:`plan_model_set` makes every check and decides the set (roles,
display order, refusals and their messages) without ONNX Runtime, and
:func:`open_model_set` opens a session per model of that plan. The CLI does both
(:func:`load_model_set`); the window only plans, at start-up and on a folder or device
change, and its batch process opens the plan it is sent, so the window's process holds no
ONNX Runtime and never states a device it did not observe.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from desktop.engine.devices import Device, DeviceReport, device_not_observed
from desktop.engine.errors import BatchError, ModelError
from desktop.engine.manifest import ModelManifest, load_verified_model, read_manifest
from desktop.engine.onnx_io import check_model_bytes
from desktop.engine.paths import bundled_models_dir, user_models_dir
from desktop.engine.trust import ALLOW_UNSIGNED_ENV, allow_unsigned, check_pin, verify_signature

if TYPE_CHECKING:
    from desktop.engine.inference import OnnxModel

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


@dataclass(frozen=True)
class VerifiedModel:
    """A package that passed every check (:func:`verify_model`), not opened: no session."""

    manifest: ModelManifest


@dataclass(frozen=True)
class RefusedPackage:
    """A package ONNX Runtime refused to open (:class:`SessionRefused`), as
    :func:`open_model_set` reported it: which file, its exact content, and the refusal.

    Handed back to :func:`plan_model_set` (``refused=``), it makes a later plan skip that
    very package as a failed check would, with the same words, and choose the alternative
    at once: a window need not plan, and a batch process open and be refused, the same file
    before every batch. A new download of the package (another sha256) is planned again.
    """

    model_id: str
    version: str
    path: Path  # the manifest
    sha256: str  # of the model file, as verified against the manifest
    problem: str  # the refusal, as :attr:`ModelSet.problems` holds it

    @classmethod
    def of(cls, manifest: ModelManifest, problem: str) -> RefusedPackage:
        """The refusal of ``manifest``'s package, in ``problem``'s words."""
        if manifest.path is None:
            raise ModelError(f"manifest of {manifest.id} was not read from a file")
        return cls(manifest.id, manifest.version, manifest.path, manifest.sha256, problem)

    def matches(self, manifest: ModelManifest) -> bool:
        """True for the same manifest file holding the same model file's sha256."""
        return (
            manifest.path is not None
            and manifest.sha256 == self.sha256
            and manifest.path.resolve() == self.path.resolve()
        )


@dataclass
class LoadedModel:
    """A verified package with its ONNX Runtime session (:func:`open_model_set`)."""

    manifest: ModelManifest
    model: OnnxModel


#: The version of the engine's own screening rules, the last part of every results key: what
#: the engine decides around the models (the smallest image screened, a DICOM header that
#: vetoes the gate; screening.py, runner.py). Bump it with any change that would make a stored
#: result differ from a new run of the same file with the same models, so that results stored
#: by an older MedScreen are not reused after an upgrade (2: images under 64 px refused, MR/CT/
#: NM/US… DICOM headers veto the gate, 2 December 2026; 3: SEG/RT/SR/PR/KO… headers refuse
#: whatever the gate said, and a Modality that is no DICOM code is never quoted).
SCREENING_RULES = "rules@3"


class _Roles:
    """What a model set and its plan both say about their models (same ids, same key)."""

    modality: VerifiedModel | LoadedModel
    findings: Mapping[str, VerifiedModel | LoadedModel]
    patient_group: VerifiedModel | LoadedModel | None

    @property
    def manifests(self) -> dict[str, ModelManifest]:
        out = {self.modality.manifest.id: self.modality.manifest}
        out.update({k: v.manifest for k, v in self.findings.items()})
        if self.patient_group is not None:
            out[self.patient_group.manifest.id] = self.patient_group.manifest
        return out

    @property
    def key(self) -> str:
        """Identifies the exact model versions and the engine's screening rules: results are
        cached per scan and per key, so a scan is screened again when either changes."""
        return "|".join([*(m.key for m in self.manifests.values()), SCREENING_RULES])

    @property
    def unsigned(self) -> tuple[str, ...]:
        """Ids of models loaded without verification (developer option): reports say so."""
        return tuple(mid for mid, m in self.manifests.items() if m.unsigned)


@dataclass(frozen=True)
class ModelSetPlan(_Roles):
    """A verified model set before any session is opened (:func:`plan_model_set`).

    Every check of a package happens when the plan is made (signature, pin, sha256, the
    graph's input and output names, downgrade refusal, the roles), so a process that only
    needs to know *which* models it offers — the window — holds the same verdicts and
    problems as one that runs them, without ONNX Runtime. Small and picklable: the batch
    process opens it (:func:`open_model_set`). ``device`` is what was asked for; where
    inference really runs only the process that opens the sessions can tell
    (:attr:`ModelSet.device`).
    """

    modality: VerifiedModel
    findings: dict[str, VerifiedModel]  # display order
    device: Device
    problems: tuple[str, ...] = ()
    patient_group: VerifiedModel | None = None
    #: Per model id, what :func:`open_model_set` opens instead when ONNX Runtime cannot
    #: open the chosen package (a user model that passed every check here but uses an
    #: operator this ONNX Runtime lacks, or holds a damaged weight): the next package of
    #: that id, in order of preference, that passes every check too — the bundled one.
    #: Not part of :attr:`key`: only a model that really runs is.
    alternatives: dict[str, VerifiedModel] = field(default_factory=dict)
    #: Packages ONNX Runtime refused to open that this set skipped: reported by
    #: :func:`open_model_set` (the set it opened instead), or passed to
    #: :func:`plan_model_set` as ``refused`` and met again; their words are in problems.
    refused: tuple[RefusedPackage, ...] = ()

    @classmethod
    def of(cls, models: ModelSet | ModelSetPlan) -> ModelSetPlan:
        """The plan of ``models`` (itself when it is one)."""
        if isinstance(models, ModelSetPlan):
            return models
        return models.plan

    def describe_device(self) -> str:
        """No claim about the device: the plan has opened nothing."""
        return device_not_observed(self.device)


@dataclass
class ModelSet(_Roles):
    """The modality gate, the finding models and the optional patient-group model, verified
    and opened: the plan (:func:`plan_model_set`) with a session per model.

    ``findings`` are in display order (each manifest's ``display.order``, then id): the
    order of the table's columns and the reports'. ``patient_group`` estimates child/adult
    from the image when neither the staff nor the file says it; without it such scans have
    no known group. ``device`` is what these sessions really run on.
    """

    modality: LoadedModel
    findings: dict[str, LoadedModel]
    device: DeviceReport
    problems: list[str] = field(default_factory=list)
    patient_group: LoadedModel | None = None
    #: Packages of the plan ONNX Runtime refused to open (their alternatives run), and
    #: those the plan had skipped already (:attr:`ModelSetPlan.refused`).
    refused: tuple[RefusedPackage, ...] = ()

    @property
    def plan(self) -> ModelSetPlan:
        """The verified set without its sessions (what the batch process is sent)."""
        group = self.patient_group
        return ModelSetPlan(
            VerifiedModel(self.modality.manifest),
            {k: VerifiedModel(v.manifest) for k, v in self.findings.items()},
            self.device.requested,
            tuple(self.problems),
            VerifiedModel(group.manifest) if group is not None else None,
            refused=self.refused,
        )

    def describe_device(self) -> str:
        return self.device.describe()


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


def verify_model(
    manifest: ModelManifest, *, bundled: bool = False, problems: list[str] | None = None
) -> VerifiedModel:
    """Every check of one package, without opening it: the model bytes against the
    manifest's sha256, the signature (and the pin when ``bundled``), and the graph's input
    and output names against the manifest's. Raises :class:`ModelError` naming the file.

    Notes about packages accepted only through the developer option go to ``problems``.
    """
    data = load_verified_model(manifest)
    manifest, note = verify_package(manifest, bundled)
    try:
        check_model_bytes(data, manifest.input_name, _outputs_of(manifest))
    except ModelError as exc:
        raise ModelError(f"model {manifest.id} ({manifest.file}) {exc}") from exc
    if note is not None:
        log.warning("unsigned model: %s", note)
        if problems is not None:
            problems.append(note)
    return VerifiedModel(manifest)


class SessionRefused(ModelError):
    """ONNX Runtime could not open a package that passed every check without it (an
    operator it does not know, a damaged weight, names it reads otherwise): the package is
    refused like one that failed a check, and its alternative, if any, is opened."""


def open_model(
    verified: VerifiedModel, device: Device, threads: int | None = None
) -> tuple[LoadedModel, DeviceReport]:
    """Open a verified package's ONNX Runtime session on ``device``.

    The model file is read again and must still match the manifest's sha256 (the session is
    built from the very bytes checked: a file replaced since it was verified — in another
    process, or minutes ago — is refused, never run: :class:`ModelError`). A session ONNX
    Runtime cannot create raises :class:`SessionRefused`, naming the file and ONNX
    Runtime's reason; a device that cannot be used, :class:`BatchError`.
    """
    from desktop.engine.inference import OnnxModel, create_session  # ONNX Runtime: here only

    manifest = verified.manifest
    data = load_verified_model(manifest)
    try:
        session, report = create_session(data, manifest.id, device, threads)
    except ModelError as exc:
        reason = exc.__cause__ if exc.__cause__ is not None else exc
        raise SessionRefused(
            f"model package {manifest.path} ({manifest.id} {manifest.version}) could not be "
            f"opened by ONNX Runtime: {reason}"
        ) from exc
    try:
        model = OnnxModel(session, manifest.input_name, _outputs_of(manifest))
    except ModelError as exc:
        raise SessionRefused(f"model {manifest.id} ({manifest.file}) {exc}") from exc
    return LoadedModel(manifest, model), report


def plan_model_set(
    dirs: Iterable[Path] | None = None,
    device: Device = Device.AUTO,
    refused: Iterable[RefusedPackage] = (),
) -> ModelSetPlan:
    """Find and verify the gate and every finding model; open nothing. Raises BatchError
    when the set is unusable.

    A user model that fails verification (unsigned, altered, damaged, a graph that lacks
    what its manifest names, or older than the bundled one) is refused with a warning and
    the bundled model of the same id, if any, is used instead, so one bad download does not
    stop a clinic and none changes a result silently. Packages in the bundled folder must
    also match their pinned digests. The window calls this (its batches run elsewhere);
    :func:`load_model_set` is this, then :func:`open_model_set`.

    ``refused``: packages ONNX Runtime already refused to open (:attr:`ModelSet.refused`,
    as a batch process reported them). One that passes every check here again with the very
    same content is skipped like a package that failed one, its refusal among the problems
    (:attr:`ModelSetPlan.refused` too), and the next of its id is chosen.
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

    known = list(refused)
    met: list[RefusedPackage] = []
    verified: dict[str, VerifiedModel] = {}
    alternatives: dict[str, VerifiedModel] = {}
    for model_id, options in candidates.items():
        for index, (manifest, bundled) in enumerate(options):
            try:
                _refuse_downgrade(manifest, [m for m, _ in options[index + 1 :]])
                model = verify_model(manifest, bundled=bundled, problems=problems)
            except ModelError as exc:
                problems.append(str(exc))
                log.warning("model refused: %s", exc)
                continue
            # checked after verification: the file's bytes are then known to match sha256
            again = next((r for r in known if r.matches(model.manifest)), None)
            if again is not None:
                problems.append(again.problem)
                met.append(again)
                log.info("model refused before by ONNX Runtime, not planned: %s", again.path)
                continue
            verified[model_id] = model
            alternative = _alternative(model, options[index + 1 :])
            if alternative is not None:
                alternatives[model_id] = alternative
            break

    gates = [m for m in verified.values() if m.manifest.role == "modality"]
    findings = {k: m for k, m in verified.items() if m.manifest.role == "finding"}
    groups = [m for m in verified.values() if m.manifest.role == "patient_group"]
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
    ordered = sorted(findings.items(), key=lambda item: item[1].manifest.display_order)
    return ModelSetPlan(
        gates[0],
        dict(ordered),
        device,
        tuple(problems),
        patient_group=groups[0] if groups else None,
        alternatives=alternatives,
        refused=tuple(met),
    )


def _alternative(
    chosen: VerifiedModel, rest: list[tuple[ModelManifest, bool]]
) -> VerifiedModel | None:
    """The package of the same id and role to open if ONNX Runtime cannot open ``chosen``:
    the first of ``rest`` (later in preference: the bundled one after a user's) that passes
    every check. Its failures are only logged: nobody uses it while ``chosen`` opens."""
    for index, (manifest, bundled) in enumerate(rest):
        if manifest.role != chosen.manifest.role:
            continue
        try:
            _refuse_downgrade(manifest, [m for m, _ in rest[index + 1 :]])
            return verify_model(manifest, bundled=bundled)
        except ModelError as exc:
            log.info("no fallback for %s: %s", chosen.manifest.id, exc)
    return None


def open_model_set(models: ModelSetPlan | ModelSet, threads: int | None = None) -> ModelSet:
    """The plan's models with their ONNX Runtime sessions, on the plan's device: same
    manifests, order, problems and :attr:`ModelSet.key`. A set already open is returned
    as it is.

    Run in the process that screens (the CLI; the window's batch process, which receives
    the plan the window verified). What is re-checked is what could have changed on disk
    since the plan was made: each model file is read once more and must still match its
    manifest's sha256 (else :class:`ModelError` naming the file). ``device`` of the result
    is what these sessions really run on.

    A package ONNX Runtime cannot open (:class:`SessionRefused`) is refused as the plan
    refuses a bad user model: its alternative (:attr:`ModelSetPlan.alternatives`, the
    bundled model of the same id) is opened instead and the refusal, naming the file and
    ONNX Runtime's reason, joins :attr:`ModelSet.problems`; the key then differs from the
    plan's. Without an alternative, :class:`BatchError` naming the file.
    """
    if isinstance(models, ModelSet):
        return models
    plan = models
    reports: list[DeviceReport] = []
    problems = list(plan.problems)
    refused = list(plan.refused)

    def opened(verified: VerifiedModel) -> LoadedModel:
        try:
            loaded, report = open_model(verified, plan.device, threads)
        except SessionRefused as exc:
            loaded, report = _open_alternative(plan, verified, exc, threads, problems)
            refused.append(RefusedPackage.of(verified.manifest, problems[-1]))
        reports.append(report)
        return loaded

    modality = opened(plan.modality)
    findings = [(k, opened(v)) for k, v in plan.findings.items()]
    group = opened(plan.patient_group) if plan.patient_group is not None else None
    return ModelSet(
        modality,
        # an alternative may sit elsewhere in the display order than the refused package
        dict(sorted(findings, key=lambda item: item[1].manifest.display_order)),
        _combine(reports, plan.device),
        problems,
        patient_group=group,
        refused=tuple(refused),
    )


def _open_alternative(
    plan: ModelSetPlan,
    refused: VerifiedModel,
    exc: SessionRefused,
    threads: int | None,
    problems: list[str],
) -> tuple[LoadedModel, DeviceReport]:
    """Open the plan's alternative to ``refused`` and note why (:func:`open_model_set`)."""
    model_id = refused.manifest.id
    alternative = plan.alternatives.get(model_id)
    if alternative is None:
        raise BatchError(f"{exc}; there is no other {model_id} model to use instead") from exc
    problem = f"{exc}; the {model_id} model in {alternative.manifest.path} is used instead"
    log.warning("model refused: %s", problem)
    problems.append(problem)
    return open_model(alternative, plan.device, threads)


def load_model_set(
    dirs: Iterable[Path] | None = None,
    device: Device = Device.AUTO,
    threads: int | None = None,
) -> ModelSet:
    """Verify the models (:func:`plan_model_set`) and open them here
    (:func:`open_model_set`): the CLI's way, which screens in its own process. Raises
    BatchError when the set is unusable."""
    return open_model_set(plan_model_set(dirs, device), threads)


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
