"""Train the tuberculosis model on the NLM sets (Shenzhen + Montgomery).

    python -m training.train_tb --data /work/shared/data/tb/nlm_299 --out runs/tb

Default recipe: ImageNet MobileNet v1 alpha 0.25 at 224×224 (inputs in [-1, 1]), head first
with the backbone frozen, then the whole network at a low learning rate. ``--recipe scratch``
runs the seed article's from-scratch CNN on 256×256 grey input for comparison.
"""

from __future__ import annotations

from desktop.engine.preprocess import PreprocessSpec
from training import data as D
from training.binary import add_binary_args, run_binary
from training.models import seed_scratch_cnn
from training.runs import common_args, setup_logging

LABELS = ["normal", "tuberculosis"]
INTENDED_USE = (
    "Decision support for tuberculosis screening of adult frontal (PA) chest radiographs: "
    "ranks and flags scans for review by a clinician. Not a diagnosis; never rules TB out. "
    "Only for images the modality gate accepts as chest X-rays."
)
CITATION = (
    "NLM tuberculosis chest X-ray sets, Shenzhen No.3 People's Hospital (CHNCXR) and "
    "Montgomery County, USA (MCUCXR), resized to 299x299 grey PNG; Jaeger S, et al. Two "
    "public chest X-ray datasets for computer-aided screening of pulmonary diseases. Quant "
    "Imaging Med Surg 2014;4(6):475-7."
)
SEED = (
    "scratch",
    PreprocessSpec(256, 256, 1, "stretch", "area", 1.0, 0.0),
    seed_scratch_cnn,
    "seed article: from-scratch 4-block CNN (conv-ReLU-maxpool 16/32/64/128), 256x256 grey "
    "in [0,1], GAP + Dropout 0.5 + Dense softmax, lr 1e-3, early stopping",
)


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__ or "", "runs/tb")
    add_binary_args(p, "scratch")
    args = p.parse_args(argv)
    setup_logging()
    run_binary(
        args,
        model_id="tb",
        name="Tuberculosis",
        labels=LABELS,
        records=D.list_tb(args.data),
        seed_recipe=SEED,
        citation=CITATION,
        split_method="70/15/15 by image (each image is one patient), stratified by class and "
        "source hospital (Shenzhen/Montgomery), fixed seed",
        intended_use=INTENDED_USE,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
