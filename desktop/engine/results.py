"""What screening produces for one file, and how flags follow from an operating point.

Flags are never stored: a result keeps probabilities, and :func:`is_flagged` applies the
operating point chosen at display or report time, so changing it needs no re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from desktop.engine.manifest import ModelManifest, OperatingPoint

#: Longest side, in pixels, of the thumbnail kept with every result.
THUMBNAIL_SIZE = 384


class ScanStatus(StrEnum):
    OK = "ok"  # screened by every finding model
    NOT_CHEST_XRAY = "not_chest_xray"  # the modality gate refused it; reason says why
    ERROR = "error"  # could not be read or screened; reason says why


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
    #: A small grey PNG (longest side THUMBNAIL_SIZE) kept so reports, the table and the
    #: heatmap overlay work even when the original file has moved or gone.
    thumbnail_png: bytes | None = field(default=None, repr=False)

    def public_metadata(self) -> dict[str, object]:
        from desktop.engine.scan import IDENTIFYING_FIELDS

        return {k: v for k, v in self.metadata.items() if k not in IDENTIFYING_FIELDS}


@dataclass(frozen=True)
class ThresholdChoice:
    """The user's operating point: a manifest point by name, or one custom threshold.

    A name is resolved per model (each model brings its own thresholds); a number applies to
    every finding model.
    """

    name: str | None = None
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> ThresholdChoice:
        """``None``/``""`` → each model's default; ``"0.4"`` → custom; ``"balanced"`` → named."""
        if not text:
            return cls()
        try:
            value = float(text)
        except ValueError:
            return cls(name=text)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a custom threshold must lie in [0, 1], got {value}")
        return cls(threshold=value)

    def resolve(self, manifest: ModelManifest) -> OperatingPoint:
        if self.threshold is not None:
            return OperatingPoint(name="custom", threshold=self.threshold)
        return manifest.operating_point(self.name)

    def label(self) -> str:
        if self.threshold is not None:
            return f"custom {self.threshold:g}"
        return self.name or "default"


def is_flagged(probability: float, point: OperatingPoint) -> bool:
    """A scan is flagged when the positive probability reaches the threshold."""
    return probability >= point.threshold


def flags_for(
    result: ScanResult, manifests: Mapping[str, ModelManifest], choice: ThresholdChoice
) -> dict[str, bool | None]:
    """Each finding model's flag for ``result`` (None where the model did not run)."""
    out: dict[str, bool | None] = {}
    for model_id, manifest in manifests.items():
        if manifest.role != "finding":
            continue
        finding = result.findings.get(model_id)
        out[model_id] = (
            None if finding is None else is_flagged(finding.probability, choice.resolve(manifest))
        )
    return out
