"""The model manifest (ARCHITECTURE.md, contract 2): what a shipped ``.onnx`` is, how to use it.

A manifest is a JSON file beside its model (``assets/models/<id>.json`` next to ``<id>.onnx``).
It is the single place that says what the model expects (input, preprocessing), what it
returns (output names, labels, which label is positive), how to turn a probability into a
flag (operating points measured on validation data) and how good it is (held-out metrics).
Thresholds belong to a model version: a new model brings its own.

Example (abridged)::

    {
      "schema_version": 1,
      "id": "tb", "version": "1.0.0", "name": "Tuberculosis",
      "role": "finding",                       # "modality" (the gate) or "finding"
      "task": "binary",                        # or "multiclass"
      "labels": ["normal", "tuberculosis"], "positive_label": "tuberculosis",
      "file": "tb.onnx", "sha256": "…",
      "input": {"name": "image", "shape": [null, 224, 224, 3], "layout": "NHWC",
                "dtype": "float32"},
      "preprocessing": {"size": [224, 224], "channels": 3, "fit": "stretch",
                        "resample": "area", "scale": 2.0, "offset": -1.0},
      "outputs": {"probabilities": "probabilities", "activation_map": "activation_map"},
      "operating_points": {"screening": {"threshold": 0.31, "sensitivity": 0.92,
                                         "specificity": 0.78}, "balanced": {…}},
      "default_operating_point": "screening",
      "metrics": {"test": {"auc": 0.93, …}},
      "calibration": {"method": "temperature", "temperature": 1.4},
      "training": {"data": ["…"], "date": "2026-11-22", "recipe": "…"},
      "intended_use": "…", "card": "tb.md"
    }

The manifest and its model are one package: a detached Ed25519 signature ``<id>.sig`` covers
the manifest (and through its ``sha256`` the model); :mod:`desktop.engine.trust` checks it
and the registry loads nothing unverified. Reading a manifest here validates it only.

A modality model adds ``"gate": {"chest_label": "CXR", "min_probability": 0.5}`` and may add
``"ood": {"output": "ood_score", "threshold": 3.2, "method": "…"}``: scans whose score is
above the threshold are refused as not recognised.

A finding model may carry its **scope**, written by the training/export step from the data the
model really saw: ``"scope": {"age_years": [18, null], "views": ["PA"], "summary": "…"}``
(whole years, both ends inclusive, ``null`` = open; views as DICOM ViewPosition values, with
``LATERAL`` for any lateral). A manifest without a scope, or a scope without ``age_years`` or
``views``, sets no restriction of that kind. A scan outside a model's scope keeps its score
but is never flagged by it (:mod:`desktop.engine.patients`). Optional ``"display":
{"short_name": "TB", "order": 1}`` gives the column label and the column order (lower
first); without it the label is the manifest's ``name`` and models follow by id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.preprocess import PreprocessSpec
from desktop.engine.trust import manifest_digest

SCHEMA_VERSION = 1
#: Shipped manifests are ~15 KB; a file far larger is refused before it is read whole.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: "patient_group": the child/adult estimate from the image (``agegroup``), at most one.
ROLES = ("modality", "finding", "patient_group")


#: The patient groups a manifest may choose an operating point for (``by_group``); the same
#: words as :class:`desktop.engine.patients.PatientGroup`.
PATIENT_GROUPS = ("adult", "child")


@dataclass(frozen=True)
class OperatingPoint:
    """A named threshold with the sensitivity/specificity it had on validation data.

    A manifest may also choose the point per patient group (``by_group``: the same rule on
    each group's own validation images), because one pooled threshold is set by whichever
    group dominates validation. ``threshold`` is then the point for a scan whose group is
    unknown; :meth:`for_group` gives the one that applies to a scan (``group`` set on it).
    """

    name: str
    threshold: float
    sensitivity: float | None = None
    specificity: float | None = None
    #: (group, point) pairs, sorted by group: a tuple so the point stays hashable
    by_group: tuple[tuple[str, OperatingPoint], ...] = ()
    group: str | None = None  # the patient group this point was chosen for (None: any)

    def for_group(self, group: str | None) -> OperatingPoint:
        """The point for a scan of patient ``group``: that group's own where the manifest
        chose one, else this one (an unknown group, or a point without groups)."""
        for name, point in self.by_group:
            if name == group:
                return point
        return self

    def describe(self) -> str:
        name = f"{self.name}, {self.group}" if self.group else self.name
        if self.by_group:
            return f"{name} ({self._describe_groups()})"
        thr = f"threshold {self.threshold:.3f}"
        if self.sensitivity is None or self.specificity is None:
            return f"{name} ({thr})"
        return (
            f"{name} ({thr}; validation sensitivity "
            f"{self.sensitivity:.2f}, specificity {self.specificity:.2f})"
        )

    def _describe_groups(self) -> str:
        """Every group's threshold with its own validation figures. The pooled point's
        figures belong to its group-unknown threshold only: printed alone, a clinic screening
        adults read the pooled sensitivity (pneumonia 0.90) as its adult point's (0.74)."""
        groups = [*self.by_group, ("group unknown", self)]
        thr = "thresholds " + ", ".join(f"{g} {p.threshold:.3f}" for g, p in groups)
        figures = [
            f"{g} {p.sensitivity:.2f} / {p.specificity:.2f}"
            for g, p in groups
            if p.sensitivity is not None and p.specificity is not None
        ]
        if not figures:
            return thr
        return f"{thr}; validation sensitivity / specificity {', '.join(figures)}"


@dataclass(frozen=True)
class Scope:
    """Where a model's scores mean something: the ages and views of the data it was trained on.

    Ages are in years, both ends inclusive of the whole year (``[1, 5]`` = from the first
    birthday to the day before the sixth: an age is in range when ``min <= age`` and
    ``floor(age) <= max``); ``None`` is an open end. ``views`` empty = any view. It is read from
    the manifest and nowhere else, so a new model version brings its own scope with no code
    change.
    """

    age_min: float | None = None
    age_max: float | None = None
    views: tuple[str, ...] = ()
    summary: str = ""

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any]) -> Scope:
        ages = data.get("age_years")
        age_min = age_max = None
        if ages is not None:
            if not isinstance(ages, list | tuple) or len(ages) != 2:
                raise ValueError("scope.age_years must be [min, max] (null for an open end)")
            age_min, age_max = (_opt_age(a) for a in ages)
            if age_min is not None and age_max is not None and age_min > age_max:
                raise ValueError(f"scope.age_years {list(ages)}: min is above max")
        views = data.get("views") or ()
        if not isinstance(views, list | tuple) or not all(isinstance(v, str) for v in views):
            raise ValueError("scope.views must be a list of view names such as PA, AP")
        return cls(
            age_min=age_min,
            age_max=age_max,
            views=tuple(normal_view(v) for v in views),
            summary=str(data.get("summary", "")),
        )

    @property
    def restricts(self) -> bool:
        return self.age_min is not None or self.age_max is not None or bool(self.views)


#: DICOM ViewPosition values that mean a lateral (or decubitus) film: one scope name for all.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"})


def normal_view(view: str) -> str:
    """A view name as scopes compare it: upper case, every lateral spelling ``LATERAL``."""
    name = view.upper().strip()
    return "LATERAL" if name in LATERAL_VIEWS else name


def _opt_age(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 150:
        raise ValueError(f"scope.age_years bound {value!r} is not a number of years in 0-150")
    return float(value)


@dataclass(frozen=True)
class GateSpec:
    chest_label: str
    min_probability: float = 0.5


@dataclass(frozen=True)
class OodSpec:
    output: str
    threshold: float
    method: str = ""


@dataclass(frozen=True)
class ModelManifest:
    id: str
    version: str
    name: str
    role: str
    task: str
    labels: tuple[str, ...]
    positive_label: str | None
    file: str
    sha256: str
    input_name: str
    preprocessing: PreprocessSpec
    probabilities_output: str
    activation_output: str | None
    operating_points: dict[str, OperatingPoint]
    default_operating_point: str | None
    gate: GateSpec | None = None
    ood: OodSpec | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    card: str | None = None
    #: None: the manifest sets no scope (no restriction)
    scope: Scope | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    path: Path | None = None  # the manifest file this was read from
    #: sha256 of the canonical manifest (:func:`desktop.engine.trust.manifest_digest`)
    manifest_sha256: str = ""
    #: set by the registry once the package is verified: the trusted key's name
    signed_by: str = ""
    #: True when loaded only because of MEDSCREEN_ALLOW_UNSIGNED_MODELS (failed verification)
    unsigned: bool = False

    @property
    def key(self) -> str:
        """``id@version#model-sha-prefix.manifest-sha-prefix``: what results are keyed by.

        Both hashes are in it, so a new model re-screens, and results screened with an edited
        manifest (other labels or thresholds) are never reused once the genuine files return.
        """
        return f"{self.id}@{self.version}#{self.sha256[:12]}.{self.manifest_sha256[:12]}"

    @property
    def short_name(self) -> str:
        """The column and flag label ("TB"): the manifest's ``display.short_name`` or name."""
        display = self.raw.get("display") or {}
        return str(display.get("short_name") or self.name)

    @property
    def display_order(self) -> tuple[float, str]:
        """Sort key of the model's columns: ``display.order`` (lower first), then the id."""
        order = (self.raw.get("display") or {}).get("order")
        return (float(order) if isinstance(order, int | float) else float("inf"), self.id)

    @property
    def positive_index(self) -> int:
        if self.positive_label is None:
            raise ModelError(f"model {self.id} has no positive label")
        return self.labels.index(self.positive_label)

    @property
    def model_path(self) -> Path:
        if self.path is None:
            raise ModelError(f"manifest of {self.id} was not read from a file")
        return self.path.parent / self.file

    def operating_point(self, name: str | None = None) -> OperatingPoint:
        """The named operating point (default: the manifest's default)."""
        chosen = name or self.default_operating_point
        if chosen is None or chosen not in self.operating_points:
            known = ", ".join(sorted(self.operating_points)) or "none"
            raise ModelError(f"model {self.id} has no operating point {chosen!r} (it has: {known})")
        return self.operating_points[chosen]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> ModelManifest:
        where = str(path) if path else "manifest"
        try:
            return cls._from_dict(data, path)
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"{where} is not a valid model manifest: {detail}") from exc

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], path: Path | None) -> ModelManifest:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            )
        role = data["role"]
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        labels = tuple(str(x) for x in data["labels"])
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError("labels must be at least two distinct names")
        positive = data.get("positive_label")
        if role == "finding" and positive not in labels:
            raise ValueError(f"positive_label {positive!r} is not among labels {labels}")
        sha = str(data["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("sha256 must be 64 hex digits")
        inp = data["input"]
        if inp.get("layout", "NHWC") != "NHWC" or inp.get("dtype", "float32") != "float32":
            raise ValueError("only NHWC float32 inputs are supported")
        spec = PreprocessSpec.from_manifest(data["preprocessing"])
        shape = inp.get("shape")
        if shape is not None and tuple(shape[1:]) != spec.input_shape:
            raise ValueError(f"input shape {shape} disagrees with preprocessing {spec.input_shape}")
        points = {
            name: _operating_point(name, p)
            for name, p in dict(data.get("operating_points", {})).items()
        }
        default_point = data.get("default_operating_point")
        if role == "finding":
            if not points:
                raise ValueError("a finding model needs at least one operating point")
            if default_point not in points:
                raise ValueError(f"default_operating_point {default_point!r} is not defined")
        gate = None
        if role == "modality":
            g = data["gate"]
            gate = GateSpec(str(g["chest_label"]), float(g.get("min_probability", 0.5)))
            if gate.chest_label not in labels:
                raise ValueError(f"gate label {gate.chest_label!r} is not among labels")
        ood = None
        if data.get("ood"):
            o = data["ood"]
            ood = OodSpec(str(o["output"]), float(o["threshold"]), str(o.get("method", "")))
        outputs = data["outputs"]
        scope = None
        if data.get("scope") is not None:
            if not isinstance(data["scope"], Mapping):
                raise ValueError("scope must be an object")
            scope = Scope.from_manifest(data["scope"])
        display = data.get("display")
        if display is not None and not isinstance(display, Mapping):
            raise ValueError("display must be an object")
        return cls(
            id=str(data["id"]),
            version=str(data["version"]),
            name=str(data.get("name", data["id"])),
            role=role,
            task=str(data["task"]),
            labels=labels,
            positive_label=positive,
            file=str(data["file"]),
            sha256=sha,
            input_name=str(inp["name"]),
            preprocessing=spec,
            probabilities_output=str(outputs["probabilities"]),
            activation_output=outputs.get("activation_map"),
            operating_points=points,
            default_operating_point=default_point,
            gate=gate,
            ood=ood,
            metrics=dict(data.get("metrics", {})),
            intended_use=str(data.get("intended_use", "")),
            card=data.get("card"),
            scope=scope,
            raw=dict(data),
            path=path,
            manifest_sha256=manifest_digest(data),
        )


def threshold_text(point: OperatingPoint) -> str:
    """A point's threshold as reports print it: ``0.611``, or one per patient group
    (``adult 0.800 · child 0.611 · group unknown 0.650``)."""
    if not point.by_group:
        return f"{point.threshold:.3f}"
    parts = [f"{g} {p.threshold:.3f}" for g, p in point.by_group]
    return " · ".join([*parts, f"group unknown {point.threshold:.3f}"])


def _operating_point(name: str, data: Mapping[str, Any]) -> OperatingPoint:
    """One manifest operating point, with its per-group points (``by_group``) if any."""
    groups = dict(data.get("by_group") or {})
    for group in groups:
        if group not in PATIENT_GROUPS:
            raise ValueError(
                f"operating point {name}: by_group has {group!r}, expected {PATIENT_GROUPS}"
            )
    by_group = tuple(
        (group, _operating_point(name, {**groups[group], "group": group}))
        for group in sorted(groups)
    )
    point = OperatingPoint(
        name=name,
        threshold=float(data["threshold"]),
        sensitivity=_opt_float(data.get("sensitivity")),
        specificity=_opt_float(data.get("specificity")),
        by_group=by_group,
        group=data.get("group"),
    )
    if not 0.0 <= point.threshold <= 1.0 or not math.isfinite(point.threshold):
        where = f"{name} ({point.group})" if point.group else name
        raise ValueError(f"operating point {where} threshold outside [0, 1]")
    return point


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def read_manifest(path: Path) -> ModelManifest:
    """Parse and validate one manifest file (does not touch the model file)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ModelError(f"model manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelError(f"model manifest {path} is not UTF-8 text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model manifest {path} is not a JSON object")
    return ModelManifest.from_dict(data, path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_verified_model(manifest: ModelManifest) -> bytes:
    """Read the model file once and check it against the manifest's sha256.

    The bytes are returned so the ONNX Runtime session is built from the very bytes that were
    verified (no second read, no window for the file to change in between).
    """
    path = manifest.model_path
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(
            f"model file {path.name} named by {manifest.path} is missing; reinstall MedScreen "
            f"or remove the manifest"
        ) from exc
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    digest = sha256_bytes(data)
    if digest != manifest.sha256:
        raise ModelError(
            f"model file {path.name} does not match its manifest (sha256 {digest[:12]}…, "
            f"expected {manifest.sha256[:12]}…): it was modified or damaged; it will not be used"
        )
    return data
