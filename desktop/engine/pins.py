"""Package digests of the models bundled in ``assets/models``: GENERATED, do not edit.

Rewritten by ``python -m export.sign --key PATH assets/models/*.json`` after a release export.
Each value is :func:`desktop.engine.trust.package_digest` of the manifest and its model file;
the registry refuses a bundled package whose digest differs, or whose id is not listed here.
"""

BUNDLED_PINS: dict[str, str] = {
    "agegroup": "a574f3fccabd3365cfc8ff5a002ab80b3d69cf53541690825f23ac2e8dd4510a",
    "modality": "1f449e5e7c7c12199caab33cd1a9b7d6e24b789fd540337c46e287205c56cc7f",
    "pneumonia": "a8fedaaa8e54ea046b9f7b73fe53b6c9d0a4c804095e809f5dc277f2d7306972",
    "tb": "c600414a2363da2ace1ab0e976ce081d1e6209c1aae355877bf12c22feb571a9",
}
