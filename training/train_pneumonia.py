"""Train the pneumonia model on the Kermany pediatric chest X-rays (official train split).

    python -m training.train_pneumonia --data /work/shared/data/pneumonia/kermany224_train \
        --out runs/pneumonia

Exact duplicate files are dropped (kept once) and the split is by patient (``personN`` /
``IM-####``), so no child is on both sides. The official Kermany test split is withheld from
us: the test figures are on our own patient-disjoint held-out split of the train set.
``--recipe five_block`` runs the seed article's five-block CNN for comparison.
"""

from __future__ import annotations

from desktop.engine.preprocess import PreprocessSpec
from training import data as D
from training.binary import add_binary_args, run_binary
from training.models import seed_five_block_cnn
from training.runs import common_args, setup_logging

LABELS = ["normal", "pneumonia"]
INTENDED_USE = (
    "Decision support for pneumonia screening of frontal chest radiographs: ranks and flags "
    "scans for review by a clinician. Trained on pediatric (1-5 years) images from one "
    "centre; adult images are outside its training distribution. Not a diagnosis."
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
    args = p.parse_args(argv)
    setup_logging()
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


if __name__ == "__main__":
    raise SystemExit(main())
