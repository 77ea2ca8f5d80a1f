"""Record a release decision about a finished run, for the model card to show.

Why: a run chosen by a pre-stated validation rule is not always released. When the people
responsible withhold it (or release it) for reasons the rule did not cover, the card must say
so, with when the decision was taken relative to the held-out figures: a decision taken after
the test split and the external sets were read is a release veto, not a validation choice,
and it spends some of the held-out set's independence. The decision is written into the run's
record (``comparison.release``), next to its figures, so the card
(:mod:`export.finding_card`) prints it with those figures beside the shipped run's, from the
records, instead of hand-written card text that could go stale.

``python -m training.release --run runs/pneumonia_cmp_2_2_0_withheld --decision withheld
--after-held-out --reason "..." [--cost "..."] [--next "..."]
[--verdict-from-selection "Winner:"]``
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DECISIONS = ("withheld", "released")


def split_verdict(comparison: dict[str, Any], marker: str) -> None:
    """Move the judgement out of a run's recorded selection text: everything from ``marker``
    on (e.g. "Winner: ...", written when the winning run was made, after the candidates'
    validation figures were known) becomes ``comparison.verdict``; the rule before it stays the
    selection, so the card lists the run under the same rule as the candidates it was judged
    with. No words are changed; a marker that is not in the text is an error."""
    text = comparison["selection"]
    at = text.find(marker)
    if at <= 0:
        raise ValueError(f"{marker!r} not found after the rule in the recorded selection")
    comparison["selection"] = text[:at].rstrip().rstrip(".").rstrip()
    verdict = text[at:].strip()
    old = comparison.get("verdict")
    comparison["verdict"] = f"{old}; {verdict}" if old else verdict


def record_decision(
    run: Path,
    decision: str,
    *,
    after_held_out: bool,
    reason: str,
    cost: str = "",
    next_step: str = "",
    date: str | None = None,
    verdict_marker: str | None = None,
    gate_stated: bool = False,
) -> dict[str, Any]:
    """Write ``comparison.release`` into ``<run>/run.json`` and return it. ``gate_stated``:
    the held-out figures decided by a release gate written into the run's rule before the run
    was made (a gate, not a veto after the fact; it still spends the held-out set)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
    if gate_stated and not after_held_out:
        raise ValueError("a held-out release gate is applied after the held-out figures are read")
    if not reason.strip():
        raise ValueError("a release decision needs its reason")
    path = run / "run.json"
    info = json.loads(path.read_text())
    if "comparison" not in info:
        raise ValueError(f"{path} is not a comparison run record (no 'comparison')")
    if verdict_marker:
        split_verdict(info["comparison"], verdict_marker)
    release = {
        "decision": decision,
        "after_held_out": after_held_out,
        **({"gate_stated_in_advance": True} if gate_stated else {}),
        "reason": reason.strip(),
        "date": date or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if cost.strip():
        release["cost"] = cost.strip()
    if next_step.strip():
        release["next"] = next_step.strip()
    info["comparison"]["release"] = release
    path.write_text(json.dumps(info, indent=1))
    log.info("%s: %s recorded", run.name, decision)
    return release


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the run folder decided about")
    p.add_argument("--decision", choices=DECISIONS, required=True)
    p.add_argument(
        "--after-held-out",
        action="store_true",
        help="the decision was taken after the test split / external figures were read",
    )
    p.add_argument(
        "--gate-stated-in-advance",
        action="store_true",
        help="with --after-held-out: the held-out figures were judged by a release gate stated "
        "in the run's rule before the run was made",
    )
    p.add_argument("--reason", required=True)
    p.add_argument("--cost", default="", help="what the decision spent (e.g. held-out use)")
    p.add_argument("--next", default="", help="what is to be tried next")
    p.add_argument("--date", default=None, help="when it was decided (default: now, UTC)")
    p.add_argument(
        "--verdict-from-selection",
        metavar="MARKER",
        default=None,
        help="move the recorded selection text from MARKER on into comparison.verdict",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    release = record_decision(
        args.run,
        args.decision,
        after_held_out=args.after_held_out,
        reason=args.reason,
        cost=args.cost,
        next_step=args.next,
        date=args.date,
        verdict_marker=args.verdict_from_selection,
        gate_stated=args.gate_stated_in_advance,
    )
    print(json.dumps(release, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
