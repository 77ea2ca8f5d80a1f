"""Package digests of the models bundled in ``assets/models``: GENERATED, do not edit.

Rewritten by ``python -m export.sign --key PATH assets/models/*.json`` after a release export.
Each value is :func:`desktop.engine.trust.package_digest` of the manifest and its model file;
the registry refuses a bundled package whose digest differs, or whose id is not listed here.
"""

BUNDLED_PINS: dict[str, str] = {
    "modality": "43c92bdb915bb280e84acfa1cf80b26d4e291cc05064371549743c71f1cf4cf6",
    "pneumonia": "355c99be392399813053869ae562201baae282cf08edffa55d338cfd340c818d",
    "tb": "304dd81e748db9550798697bbe5f8e2214cc5e7e6575148471d4a8a381b1a87a",
}
