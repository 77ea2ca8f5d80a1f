"""Package digests of the models bundled in ``assets/models``: GENERATED, do not edit.

Rewritten by ``python -m export.sign --key PATH assets/models/*.json`` after a release export.
Each value is :func:`desktop.engine.trust.package_digest` of the manifest and its model file;
the registry refuses a bundled package whose digest differs, or whose id is not listed here.
"""

BUNDLED_PINS: dict[str, str] = {
    "agegroup": "a574f3fccabd3365cfc8ff5a002ab80b3d69cf53541690825f23ac2e8dd4510a",
    "modality": "1f449e5e7c7c12199caab33cd1a9b7d6e24b789fd540337c46e287205c56cc7f",
    "pneumonia": "355c99be392399813053869ae562201baae282cf08edffa55d338cfd340c818d",
    "tb": "304dd81e748db9550798697bbe5f8e2214cc5e7e6575148471d4a8a381b1a87a",
}
