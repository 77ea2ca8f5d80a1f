"""Models / About: which models screen, which versions, how good they were, and for what.

Everything shown comes from the verified manifests (and the model card markdown shipped next
to them), so what the clinic reads here is what the engine actually loaded.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop import DISCLAIMER, __version__
from desktop.engine.manifest import ModelManifest
from desktop.gui.results_model import reading_order, short_name


def _card_path(manifest: ModelManifest) -> Path | None:
    if manifest.path is None:
        return None
    names = [manifest.card] if manifest.card else []
    names.append(f"{manifest.id}.md")
    for name in names:
        path = manifest.path.parent / str(name)
        if path.is_file():
            return path
    return None


def _num(value: object) -> str:
    if isinstance(value, bool):  # a manifest's flag (target_met): words, not Python's False
        return "yes" if value else "no"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _split_html(values: Mapping[str, Any]) -> str:
    """One split's headline figures: n, AUC with its CI, and sens/spec per operating point."""
    parts: list[str] = []
    if "n" in values:
        positives = values.get("n_positive")
        parts.append(f"n={values['n']}" + (f" ({positives} positive)" if positives else ""))
    if "auc" in values:
        ci = values.get("auc_ci95")
        ci_text = (
            f" (95% CI {ci[0]:.2f}–{ci[1]:.2f})" if isinstance(ci, list) and len(ci) == 2 else ""
        )
        parts.append(f"AUC {values['auc']:.3f}{ci_text}")
    points = values.get("operating_points")
    if isinstance(points, Mapping):
        for name, point in points.items():
            if isinstance(point, Mapping) and "sensitivity" in point:
                parts.append(
                    f"{html.escape(str(name))}: sens {point['sensitivity']:.2f}, "
                    f"spec {point.get('specificity', float('nan')):.2f}"
                )
    known = {"n", "n_positive", "auc", "auc_ci95", "operating_points", "note"}
    for key, value in values.items():
        if key not in known and not isinstance(value, Mapping | list | str):
            parts.append(f"{html.escape(str(key).replace('_', ' '))} {_num(value)}")
    return "<br>".join(parts)


#: The splits the overview shows; every other figure is in the model card tab.
HEADLINE_SPLITS = ("validation", "test")


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return "No validation or test figures in the manifest."
    splits = [k for k in HEADLINE_SPLITS if k in metrics] or list(metrics)
    rows = []
    for split in splits:
        values = metrics[split]
        cells = _split_html(values) if isinstance(values, Mapping) else html.escape(str(values))
        if cells:
            rows.append(f"<p><b>{html.escape(str(split))}</b><br>{cells}</p>")
    return "".join(rows) or "See the model card."


def model_summary_markdown(manifest: ModelManifest) -> str:
    """The manifest facts as markdown (used when no model card file ships)."""
    points = "\n".join(
        f"- **{p.name}**: threshold {p.threshold:.3f}"
        + (
            f", validation sensitivity {p.sensitivity:.2f}, specificity {p.specificity:.2f}"
            if p.sensitivity is not None and p.specificity is not None
            else ""
        )
        for p in manifest.operating_points.values()
    )
    return (
        f"## {manifest.name}\n\n"
        f"- id `{manifest.id}`, version **{manifest.version}**, sha256 `{manifest.sha256[:16]}…`\n"
        f"- task: {manifest.task}; labels: {', '.join(manifest.labels)}\n\n"
        f"### Intended use\n\n{manifest.intended_use or 'not stated'}\n\n"
        f"### Operating points\n\n{points or 'none (modality gate)'}\n\n"
        f"### Metrics\n\n```\n{json.dumps(manifest.metrics, indent=2)}\n```\n"
    )


class ModelsDialog(QDialog):
    """The models' figures and cards, and where inference runs.

    ``device`` is the window's text for it (``MainWindow.device_text``): the device its
    batch process reported, or that none has reported yet. The window opens no session
    itself, so it has no other device to state.
    """

    def __init__(
        self,
        manifests: Mapping[str, ModelManifest],
        device: str,
        problems: list[str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        manifests = reading_order(manifests)
        self.setWindowTitle("Models and about — MedScreen")
        self.resize(820, 640)
        layout = QVBoxLayout(self)

        head = QLabel(self)
        head.setWordWrap(True)
        problems_html = "".join(f"<li>{html.escape(p)}</li>" for p in problems or [])
        head.setText(
            f"<h3>MedScreen {html.escape(__version__)}</h3>"
            f"<p><b>Inference runs on:</b> {html.escape(device or 'models not loaded')}</p>"
            f"<p>{html.escape(DISCLAIMER)}</p>"
            + (f"<p><b>Models refused:</b></p><ul>{problems_html}</ul>" if problems_html else "")
        )
        layout.addWidget(head)

        overview = QTextBrowser(self)
        overview.setOpenExternalLinks(False)
        rows = []
        for m in manifests.values():
            points = "<br>".join(html.escape(p.describe()) for p in m.operating_points.values())
            rows.append(
                "<tr>"
                f"<td><b>{html.escape(m.name)}</b><br><small>{html.escape(m.id)} ({m.role})"
                "</small></td>"
                f"<td>{html.escape(m.version)}</td>"
                f"<td><code>{m.sha256[:12]}</code></td>"
                f"<td>{points or '—'}</td>"
                f"<td>{_metrics_html(m.metrics)}</td>"
                f"<td>{html.escape(m.intended_use)}"
                + (
                    f"<br><small>Scope: {html.escape(m.scope.summary)}</small>"
                    if m.scope is not None and m.scope.summary
                    else ""
                )
                + "</td>"
                "</tr>"
            )
        overview.setHtml(
            "<table border='1' cellspacing='0' cellpadding='4' width='100%'>"
            "<tr><th>Model</th><th>Version</th><th>sha256</th><th>Operating points"
            " (validation)</th><th>Validation and test figures</th><th>Intended use</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        self.tabs = QTabWidget(self)
        self.tabs.addTab(overview, "Overview")
        for m in manifests.values():
            card = QTextBrowser(self)
            path = _card_path(m)
            if path is not None:
                card.setSearchPaths([str(path.parent)])  # the card's figures load from there
                card.setMarkdown(path.read_text(encoding="utf-8", errors="replace"))
            else:
                card.setMarkdown(model_summary_markdown(m))
            title = {"finding": short_name(m), "modality": "Modality gate"}.get(m.role, m.name)
            self.tabs.addTab(card, f"{title} card")
        layout.addWidget(self.tabs, 1)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)
        layout.addWidget(buttons)
