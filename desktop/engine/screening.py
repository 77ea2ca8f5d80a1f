"""The screening pipeline for decoded scans: the modality gate first, then the chest models.

A hand X-ray or a head CT must never get a tuberculosis score, so the finding models run only
on scans the modality model accepts as chest X-rays; every other scan is recorded as not
screened, with the reason. DICOM metadata that disagrees with the model is surfaced as a
warning rather than trusted blindly either way (headers are often wrong in practice, and so
are models), with one exception: a header whose Modality is never a radiograph (MR, CT, ...:
:data:`NOT_RADIOGRAPH_MODALITIES`, written by the scanner itself) refuses the scan even when
the gate takes it for a chest X-ray.

When a patient-group model is loaded, it estimates child/adult for every chest X-ray; the
estimate is stored with the result. Whether a finding model was applied outside its scope is
not decided here: :class:`~desktop.engine.results.ScopeRule` decides it at display and
report time from the manifests, the stored metadata and estimate, and the staff's choices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from desktop.engine.body_parts import UNRECOGNISED as UNRECOGNISED_BODY_PART
from desktop.engine.body_parts import known_body_part
from desktop.engine.clock import now_iso
from desktop.engine.cores import release_free_memory
from desktop.engine.errors import ScanError, ScanErrorCode
from desktop.engine.joint import JointModel, open_joint
from desktop.engine.loading import make_thumbnail
from desktop.engine.modalities import UNRECOGNISED, known_modality
from desktop.engine.patients import GroupEstimate
from desktop.engine.patients import patient_age_years as patient_age_years  # re-exported
from desktop.engine.preprocess import PreprocessSpec, expand_channels, preprocess_planes
from desktop.engine.quality import HEADER_REFUSAL, NOT_MEDICAL_REASON
from desktop.engine.registry import LoadedModel, ModelSet
from desktop.engine.results import THUMBNAIL_SIZE, FindingResult, ScanResult, ScanStatus
from desktop.engine.scan import Scan, ScanMetadata

log = logging.getLogger(__name__)

#: DICOM modalities that can hold a plain radiograph.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC", "PX"})
#: DICOM modalities that are never a chest radiograph, whatever the image looks like, in
#: words. A scanner writes its own Modality: an MR or CT scanner does not call its images CR,
#: nor a radiography unit MR. So where the gate takes such a file for a chest X-ray, the gate
#: is wrong (pydicom's 64x64 MR slice got TB 0.999 and topped the triage list), and "a head
#: CT must never get a TB score" wins over the image model: the scan is refused and says why.
#: A mislabelled radiograph (secondary capture "OT"/"SC") is not in this list; it warns.
#: The reason starts with quality.HEADER_REFUSAL, which the plain words are chosen by.
NOT_RADIOGRAPH_MODALITIES: Mapping[str, str] = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "NM": "nuclear medicine",
    "PT": "PET",
    "US": "ultrasound",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "IO": "intra-oral X-ray",
    "OP": "ophthalmic photograph",
    "ES": "endoscopy",
    "XC": "camera photograph",
    "SM": "slide microscopy",
}
#: DICOM objects that are no image of a patient, or an image derived from others (a
#: segmentation's label map, a dose grid, a plan, a registration, a report, a presentation
#: state, a key-object selection, an encapsulated document), in words. Whatever the gate
#: makes of their pixels is wrong (pydicom's liver SEG read "not a chest X-ray: hand"), so
#: their header refuses them even where the gate refused them as another kind, and the
#: words name what the file is.
NOT_AN_IMAGE_MODALITIES: Mapping[str, str] = {
    "SEG": "segmentation",
    "RTSTRUCT": "radiotherapy structure set",
    "RTDOSE": "radiotherapy dose",
    "RTPLAN": "radiotherapy plan",
    "RTRECORD": "radiotherapy treatment record",
    "RTSEGANN": "radiotherapy segment annotation",
    "REG": "registration",
    "FID": "fiducials",
    "SR": "structured report",
    "PR": "presentation state",
    "KO": "key object selection",
    "DOC": "document",
    "ANN": "annotation",
    "PLAN": "plan",
    "RWV": "real world value map",
    "SMR": "stereometric relationship",
    "M3D": "3D manufacturing model",
    "TEXTUREMAP": "texture map",
}
NOT_RADIOGRAPH_MODALITIES = {**NOT_RADIOGRAPH_MODALITIES, **NOT_AN_IMAGE_MODALITIES}

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "TORAX", "THX"})

#: The shortest side, in the file's own pixels, of an image that is screened: the smallest
#: images any model here was trained or tested on (MedNIST's 64×64). Below it a file is an
#: icon or a thumbnail: the gate took 8×8 random noise for a chest X-ray (101 of 3,000) and
#: every 16×16 copy of a real chest X-ray, and their finding scores mean nothing, while "not
#: flagged" on such a file would read as reassurance.
MIN_SCREEN_SIDE = 64
# A change to these rules (the header veto, the size floor) changes what a stored result
# would be: bump registry.SCREENING_RULES with it, so older results are not reused.


@dataclass(frozen=True)
class PreparedScan:
    """A decoded scan reduced to what inference and the store need (the pixels are dropped).

    ``planes`` holds each distinct spec's grey plane (h, w); the model input is the plane
    repeated over the spec's channels, made when a batch is stacked.
    """

    file: str
    sha256: str
    planes: dict[PreprocessSpec, np.ndarray]
    metadata: ScanMetadata
    thumbnail_png: bytes


class Screener:
    """Runs a :class:`ModelSet` over prepared scans. ``prepare`` is thread-safe."""

    def __init__(self, models: ModelSet) -> None:
        self.models = models
        gate = models.modality.manifest.gate
        if gate is None:
            raise ValueError("the modality model has no gate definition")
        self._gate = gate
        specs = [models.modality.manifest.preprocessing]
        specs += [m.manifest.preprocessing for m in models.findings.values()]
        if models.patient_group is not None:
            specs.append(models.patient_group.manifest.preprocessing)
        self.specs: tuple[PreprocessSpec, ...] = tuple(dict.fromkeys(specs))
        #: The chest models (findings, then the patient group) by id, and the sessions that
        #: run them per input spec (joint.py): the models that read one input in one session
        #: (the shipped TB and patient-group models share their backbone, which then runs
        #: once), taking the grey planes where the input is a plane repeated over channels.
        self._chest_models: dict[str, LoadedModel] = dict(models.findings)
        if models.patient_group is not None:
            self._chest_models[models.patient_group.manifest.id] = models.patient_group
        self._joints: list[tuple[tuple[str, ...], PreprocessSpec, JointModel]] = []
        by_spec: dict[PreprocessSpec, list[str]] = {}
        for model_id, loaded in self._chest_models.items():
            by_spec.setdefault(loaded.manifest.preprocessing, []).append(model_id)
        for spec, ids in by_spec.items():
            if len(ids) < 2 and spec.channels == 1:
                continue  # one model reading one plane: nothing to gain
            members = [self._chest_models[i] for i in ids]
            joint = open_joint(
                [m.manifest for m in members],
                [_wanted_outputs(m) for m in members],
                [m.model.session for m in members],
                _probe(spec),
                spec.channels,
            )
            if joint is not None:
                self._joints.append((tuple(ids), spec, joint))
        if self._joints:
            # The probe runs' freed buffers sit in this thread's heap arena, which the batch's
            # inference threads do not reuse: ~20 MB more resident memory for the whole batch.
            release_free_memory()

    def prepare(self, scan: Scan) -> PreparedScan:
        """Every model input and the thumbnail, from one decoded working image.

        ``scan`` must come from a decode with ``working_side=WORKING_SIDE`` (what the runner
        and :func:`~desktop.engine.preprocess.prepare_file` do), so the inputs equal training's.
        Raises :class:`ScanError` (``too_small``) for an image under :data:`MIN_SCREEN_SIDE`.
        """
        width, height = scan.metadata.width, scan.metadata.height  # the file's, not reduced
        if min(width, height) < MIN_SCREEN_SIDE:
            raise ScanError(
                ScanErrorCode.TOO_SMALL,
                f"image is {width}×{height} pixels, too small to screen (at least "
                f"{MIN_SCREEN_SIDE}×{MIN_SCREEN_SIDE}; an icon or a thumbnail cannot show the "
                "lungs' detail)",
            )
        planes = preprocess_planes(scan.pixels, self.specs, in_unit_range=scan.grey8 is not None)
        return PreparedScan(
            file=str(scan.path),
            sha256=scan.sha256,
            planes=planes,
            metadata=scan.metadata,
            thumbnail_png=make_thumbnail(
                scan.pixels if scan.grey8 is None else scan.grey8, THUMBNAIL_SIZE
            ),
        )

    def screen(self, batch: Sequence[PreparedScan]) -> list[ScanResult]:
        """Screen a batch: one gate run for all, one run per finding model for the chests."""
        if not batch:
            return []
        gate = self.models.modality
        gate_out = gate.model.run(_stack(batch, gate))
        probs = np.asarray(gate_out[gate.manifest.probabilities_output], dtype=np.float64)
        ood = gate.manifest.ood
        ood_scores = np.asarray(gate_out[ood.output], dtype=np.float64).reshape(-1) if ood else None
        labels = gate.manifest.labels
        chest_index = labels.index(self._gate.chest_label)

        verdicts: list[tuple[str, float, str | None]] = []  # (modality, score, refusal)
        for i in range(len(batch)):
            top = int(np.argmax(probs[i]))
            modality, score = labels[top], float(probs[i, top])
            refusal = None
            if ood is not None and ood_scores is not None and ood_scores[i] > ood.threshold:
                refusal = (
                    f"{NOT_MEDICAL_REASON} of a known kind (out-of-distribution "
                    f"score {ood_scores[i]:.2f} above {ood.threshold:.2f}); closest: "
                    f"{modality}, {score:.2f}"
                )
            elif top != chest_index or probs[i, chest_index] < self._gate.min_probability:
                refusal = f"predicted {modality}, {score:.2f}"
                if top == chest_index:
                    refusal = (
                        f"not confidently a chest X-ray (CXR probability "
                        f"{probs[i, chest_index]:.2f} below {self._gate.min_probability:.2f})"
                    )
            header = known_modality(batch[i].metadata.modality) or ""
            if refusal is None and header in NOT_RADIOGRAPH_MODALITIES:
                refusal = (
                    f"{HEADER_REFUSAL} (Modality {header}: "
                    f"{NOT_RADIOGRAPH_MODALITIES[header]}); the image model took it for a "
                    f"chest X-ray ({score:.2f}), which such a file cannot be"
                )
            elif header in NOT_AN_IMAGE_MODALITIES:
                refusal = (
                    f"{HEADER_REFUSAL} (Modality {header}: {NOT_AN_IMAGE_MODALITIES[header]}): "
                    "not an image of a patient to screen, whatever its pixels look like"
                )
            verdicts.append((modality, score, refusal))

        chest_rows = [i for i, v in enumerate(verdicts) if v[2] is None]
        findings: dict[int, dict[str, FindingResult]] = {i: {} for i in chest_rows}
        # The chests' model inputs, stacked once per spec: models that share a spec (the
        # shipped TB and patient-group models do) share one input array (~0.3 ms a scan).
        chests = _Inputs([batch[i] for i in chest_rows])
        estimates: dict[int, GroupEstimate] = {}
        if chest_rows:
            outputs = self._run_chest_models(chests)
            for model_id, loaded in self.models.findings.items():
                found = _findings(loaded, outputs[model_id], len(chests))
                for row, finding in zip(chest_rows, found, strict=True):
                    findings[row][model_id] = finding
            group = self.models.patient_group
            if group is not None:
                found = _estimates(group, outputs[group.manifest.id], len(chests))
                for row, estimate in zip(chest_rows, found, strict=True):
                    estimates[row] = estimate

        stamp = now_iso()
        results = []
        for i, prepared in enumerate(batch):
            modality, score, refusal = verdicts[i]
            results.append(
                ScanResult(
                    file=prepared.file,
                    sha256=prepared.sha256,
                    status=ScanStatus.OK if refusal is None else ScanStatus.NOT_CHEST_XRAY,
                    reason=refusal or "",
                    modality=modality,
                    modality_score=score,
                    modality_probabilities={
                        label: float(p) for label, p in zip(labels, probs[i], strict=True)
                    },
                    ood_score=None if ood_scores is None else float(ood_scores[i]),
                    findings=findings.get(i, {}),
                    warnings=tuple(metadata_warnings(prepared.metadata, modality, refusal is None)),
                    metadata=prepared.metadata.as_dict(),
                    models_key=self.models.key,
                    screened_at=stamp,
                    thumbnail_png=prepared.thumbnail_png,
                    group_estimate=estimates.get(i),
                )
            )
        return results

    def _run_chest_models(self, chests: _Inputs) -> dict[str, Mapping[str, np.ndarray]]:
        """Every chest model's outputs for a batch: joint sessions once, the others alone."""
        outputs: dict[str, Mapping[str, np.ndarray]] = {}
        for ids, spec, joint in self._joints:
            batch = chests.planes(spec) if joint.takes_planes else chests.inputs(spec)
            outputs.update(zip(ids, joint.run(batch), strict=True))
        for model_id, loaded in self._chest_models.items():
            if model_id not in outputs:
                outputs[model_id] = loaded.model.run(chests.inputs(loaded.manifest.preprocessing))
        return outputs


def _wanted_outputs(loaded: LoadedModel) -> list[str]:
    """What screening reads of a chest model: probabilities, and a finding's activation map
    (stored for the viewer's heatmap). The patient-group model's map is never read."""
    manifest = loaded.manifest
    names = [manifest.probabilities_output]
    if manifest.role == "finding" and manifest.activation_output:
        names.append(manifest.activation_output)
    return names


def _probe(spec: PreprocessSpec, count: int = 2) -> np.ndarray:
    """A fixed batch of grey planes of ``spec`` (noise in the spec's value range), on which a
    joint session must equal the loaded ones (joint.open_joint)."""
    grey = np.random.default_rng(20261202).random((count, spec.height, spec.width))
    return (grey * spec.scale + spec.offset).astype(np.float32)


def _stack(batch: Sequence[PreparedScan], loaded: LoadedModel) -> np.ndarray:
    spec = loaded.manifest.preprocessing
    return expand_channels(np.stack([p.planes[spec] for p in batch]), spec.channels)


class _Inputs:
    """One batch's model inputs, each spec's stacked once and shared by every model that
    reads it (ONNX Runtime does not write to its inputs)."""

    def __init__(self, scans: Sequence[PreparedScan]) -> None:
        self.scans = scans
        self._planes: dict[PreprocessSpec, np.ndarray] = {}
        self._inputs: dict[PreprocessSpec, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.scans)

    def planes(self, spec: PreprocessSpec) -> np.ndarray:
        """The scans' grey planes of ``spec``, stacked: (N, H, W)."""
        if spec not in self._planes:
            self._planes[spec] = np.stack([p.planes[spec] for p in self.scans])
        return self._planes[spec]

    def inputs(self, spec: PreprocessSpec) -> np.ndarray:
        """The model inputs of ``spec``: (N, H, W, C), the planes repeated over channels."""
        if spec not in self._inputs:
            self._inputs[spec] = expand_channels(self.planes(spec), spec.channels)
        return self._inputs[spec]


def _findings(
    loaded: LoadedModel, out: Mapping[str, np.ndarray], count: int
) -> list[FindingResult]:
    """A finding model's results for ``count`` chest X-rays from its outputs."""
    manifest = loaded.manifest
    probs = np.asarray(out[manifest.probabilities_output], dtype=np.float64)
    maps = out.get(manifest.activation_output) if manifest.activation_output else None
    positive = manifest.positive_index
    results = []
    for i in range(count):
        activation = None
        if maps is not None:
            activation = np.asarray(maps[i], dtype=np.float32).reshape(maps.shape[1:3])
        results.append(
            FindingResult(
                model_id=manifest.id,
                model_key=manifest.key,
                probability=float(probs[i, positive]),
                probabilities={
                    label: float(p) for label, p in zip(manifest.labels, probs[i], strict=True)
                },
                activation=activation,
            )
        )
    return results


def _estimates(
    loaded: LoadedModel, out: Mapping[str, np.ndarray], count: int
) -> list[GroupEstimate]:
    """p(child) of each chest X-ray, with the model's default operating point as threshold."""
    manifest = loaded.manifest
    probs = np.asarray(out[manifest.probabilities_output], dtype=np.float64)
    child = manifest.positive_index
    threshold = manifest.operating_point(None).threshold
    return [
        GroupEstimate(model_key=manifest.key, p_child=float(probs[i, child]), threshold=threshold)
        for i in range(count)
    ]


def metadata_warnings(meta: ScanMetadata, predicted: str, accepted_as_chest: bool) -> list[str]:
    """Warnings where the file's own metadata disagrees with the model.

    A model's scope (ages, views) is not a warning made here: it comes from the manifests
    (:class:`~desktop.engine.results.ScopeRule`) and takes the flag away where it applies.
    """
    warnings: list[str] = []
    written = (meta.modality or "").upper().strip()
    modality = known_modality(written) or ""  # only a DICOM code is quoted (modalities.py)
    body = (meta.body_part or "").upper().strip()
    if accepted_as_chest:
        if written and modality not in RADIOGRAPH_MODALITIES:
            said = (
                f"DICOM Modality is {modality}"
                if modality
                else f"DICOM header names {UNRECOGNISED}"
            )
            warnings.append(
                f"{said}, but the image was judged a chest X-ray: check that this is the right file"
            )
        if body and body not in CHEST_BODY_PARTS:
            part = known_body_part(body)  # only a defined term is quoted (body_parts.py)
            said = f"is {part}" if part else f"names {UNRECOGNISED_BODY_PART}"
            warnings.append(
                f"DICOM BodyPartExamined {said}, but the image was judged a chest X-ray"
            )
    elif body in CHEST_BODY_PARTS and modality in RADIOGRAPH_MODALITIES:
        warnings.append(
            f"DICOM says chest radiograph ({modality}, {body}) but the image was judged "
            f"{predicted}: check the image"
        )
    return warnings
