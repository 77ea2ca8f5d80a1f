"""Train the pneumonia model on children (Kermany) and adults (NIH) together.

    python -m training.train_pneumonia --data $DATA/pneumonia/kermany224_train \
        --nih $DATA/pneumonia/nih_adult_1000 --nlm $DATA/tb/nlm_299 \
        --backbone lite0@224 --views 3 --out runs/pneumonia

Default recipe (``--recipe transfer``, :mod:`training.transfer`): frozen ImageNet backbone,
simulated other-site views, logistic-regression head. Kermany is split by patient
(``personN`` / ``IM-####``) and NIH by its patient id, 70/15/15 stratified by class and
source; the figures are reported for children and adults, PA and AP separately, and the
share of healthy adults flagged (NIH "no finding" adults of the test split, and every NLM
normal film, which pneumonia training never sees). Without ``--nih`` the Kermany-only 1.x
design is run.

Exact duplicate files are dropped (kept once) and the split is by patient (``personN`` /
``IM-####``), so no child is on both sides. The official Kermany test split is withheld from
us: the test figures are on our own patient-disjoint held-out split of the train set.
``--recipe five_block`` runs the seed article's five-block CNN for comparison.
"""

from __future__ import annotations

from pathlib import Path

from desktop.engine.preprocess import PreprocessSpec
from training import data as D
from training.binary import add_binary_args, run_binary
from training.models import seed_five_block_cnn
from training.runs import common_args, setup_logging

LABELS = ["normal", "pneumonia"]
INTENDED_USE = (
    "Decision support for pneumonia screening of frontal chest radiographs of children and "
    "adults (PA or AP): ranks and flags scans for review by a clinician. Not a diagnosis. "
    "Only for images the modality gate accepts as chest X-rays."
)
NOT_FOR = [
    "diagnosing pneumonia or ruling it out, or telling bacterial from viral pneumonia",
    "infants under one year, lateral films, CT, or images the modality gate refuses",
    "findings other than pneumonia: a 'normal' score says nothing about TB, tumours, "
    "effusions or fractures",
    "bedside AP films of intensive-care patients without a clinician reading them: the "
    "adult training labels are text-mined from NIH reports and noisy",
]
NIH_CITATION = (
    "NIH ChestX-ray14 (NIH Clinical Center, Bethesda, USA): 500 Pneumonia + 500 No Finding "
    "frontal images (PA/AP, ages 4-85) selected by Ozturk et al., Comput Biol Med 2020, "
    "resized to 512x512; Wang X, et al. ChestX-ray8, CVPR 2017. Labels text-mined from reports."
)
NLM_CITATION = (
    "External healthy adults only (never trained on): the NLM Shenzhen and Montgomery normal "
    "chest X-rays (Jaeger S, et al. Quant Imaging Med Surg 2014;4(6):475-7)."
)
SCOPE_SUMMARY = (
    "Children (Kermany, Guangzhou, ages 1-5) and adults (NIH, USA, ages {lo}-{hi}); frontal "
    "PA and AP chest X-rays."
)
CITATION = (
    "Kermany DS, Goldbaum M, et al. Identifying Medical Diagnoses and Treatable Diseases by "
    "Image-Based Deep Learning. Cell 2018;172(5):1122-31; data: Kermany, Zhang, Goldbaum, "
    "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification, "
    "Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0); official train split, resized "
    "to 224x224"
)
SEED = (
    "five_block",
    PreprocessSpec(150, 150, 1, "stretch", "area", 1.0, 0.0),
    seed_five_block_cnn,
    "seed article: five conv blocks (conv-ReLU-BN-maxpool 16..128, dropout 0.2 in blocks "
    "3-5), 150x150 grey in [0,1], GAP + Dropout 0.5 + Dense softmax, lr 1e-3, early stopping",
)


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__ or "", "runs/pneumonia")
    add_binary_args(p, "five_block")
    p.add_argument("--nih", type=Path, default=None, help="nih_adult_1000 folder")
    p.add_argument("--nlm", type=Path, default=None, help="tb/nlm_299 (external normals)")
    args = p.parse_args(argv)
    setup_logging()
    if args.recipe == "transfer":
        return _transfer(args)
    run_binary(
        args,
        model_id="pneumonia",
        name="Pneumonia",
        labels=LABELS,
        records=D.list_pneumonia(args.data),
        seed_recipe=SEED,
        citation=CITATION,
        split_method="70/15/15 by patient (personN / IM-#### ids; NORMAL2-IM-#### grouped "
        "with IM-####), stratified by majority class, exact duplicates dropped, fixed seed",
        intended_use=INTENDED_USE,
        e1=3,
        e2=6,
        lr2=2e-4,
    )
    return 0


def targets(m: dict) -> list[dict]:
    """The issue's pneumonia targets, measured on this run."""
    from training.transfer import target

    out = []
    k = m["test"]["by_source"].get("guangzhou")
    if k:
        out.append(target("Kermany test split AUC ≥ 0.98", k["auc"], 0.98, True, f"{k['auc']:.3f}"))
    a = m["test"].get("subgroups", {}).get("age=adult (NIH)")
    if a:
        out.append(
            target("NIH adult test split AUC ≥ 0.80", a["auc"], 0.80, True, f"{a['auc']:.3f}")
        )
    h = m.get("healthy_adults", {}).get("screening", {}).get("all")
    if h:
        out.append(
            target(
                "≤ 25% of healthy adults flagged at the screening point (NIH no finding + NLM "
                "normals)",
                h["rate"],
                0.25,
                False,
                f"{h['rate']:.3f} ({h['k']}/{h['n']})",
            )
        )
    return out


def limitations(m: dict) -> list[str]:
    """Limitations that follow from this run's data and figures."""
    t = m["test"]
    sub = t.get("subgroups", {})
    out = [
        "Children are Kermany's 1-5 year-olds from one hospital (Guangzhou) plus NIH's few "
        f"under-18s ({sub.get('age=child (NIH)', {}).get('n', 0)} in the test split): "
        "children from other hospitals and infants are barely represented.",
        "Adult labels are text-mined from NIH reports (noisy; a 'Pneumonia' image may also "
        "carry infiltration, effusion or oedema), and AP films are often bedside films of "
        "sicker patients: view and label are entangled, see the PA/AP rows.",
        "The official Kermany test split is withheld from us: the Kermany figures come from a "
        "patient-disjoint split of the official training set (same hospital, same period) and "
        "overstate how well the model carries to another children's hospital.",
        "Bacterial and viral pneumonia are not told apart.",
        "Kermany images were resized to 224x224 without keeping the aspect ratio (as "
        "distributed); the app stretches every scan the same way.",
    ]
    return out


def _transfer(args) -> int:  # noqa: ANN001
    from training.nih import list_nih_images
    from training.transfer import META, Task, run_transfer, with_split

    if args.nih is None:
        raise SystemExit("--nih is required: the model is trained on children and adults")
    kermany = D.list_pneumonia(args.data)
    nih = list_nih_images(args.nih)
    for r in nih:
        META[r.path] = {"age": r.age, "view": r.view}
    records = with_split(
        [*kermany, *(D.Record(r.path, r.label, r.patient, "nih") for r in nih)],
        args.seed,
        args.fractions,
    )
    external = {}
    if args.nlm:
        normals = [r for r in D.list_tb(args.nlm) if r.label == 0]
        external["nlm_normal"] = (
            normals,
            "NLM Shenzhen + Montgomery normal films (China, USA; adults): healthy, never "
            "trained on",
        )

    def age(r: D.Record) -> str | None:
        if r.source == "guangzhou":
            return "child (Kermany)"
        return "adult (NIH)" if META[r.path]["age"] >= 18 else "child (NIH)"

    def view(r: D.Record) -> str | None:
        return f"{META[r.path]['view']} (NIH)" if r.source == "nih" else None

    ages = [r.age for r in nih]
    task = Task(
        model_id="pneumonia",
        name="Pneumonia",
        labels=LABELS,
        records=records,
        citation=[CITATION, NIH_CITATION, *([NLM_CITATION] if args.nlm else [])],
        split_method="70/15/15 by patient (Kermany personN / IM-#### ids, NORMAL2-IM-#### "
        "grouped with IM-####, exact duplicates dropped; NIH patient id), stratified by "
        "majority class and source, fixed seed",
        intended_use=INTENDED_USE,
        not_for=NOT_FOR,
        scope={
            "age_years": [1, max(ages)],
            "views": ["PA", "AP"],
            "summary": SCOPE_SUMMARY.format(lo=min(ages), hi=max(ages)),
        },
        data_path=str(args.data),
        external=external,
        subgroups={"age": age, "view": view},
        healthy_test=lambda r: r.source == "nih" and r.label == 0 and META[r.path]["age"] >= 18,
        healthy_external=tuple(external),
        targets=targets,
        limitations=limitations,
    )
    run_transfer(args, task)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
