"""Package digests of the models bundled in ``assets/models``: GENERATED, do not edit.

Rewritten by ``python -m export.sign --key PATH assets/models/*.json`` after a release export.
Each value is :func:`desktop.engine.trust.package_digest` of the manifest and its model file;
the registry refuses a bundled package whose digest differs, or whose id is not listed here.
"""

BUNDLED_PINS: dict[str, str] = {
    "agegroup": "8d5ac7e7a8d5c32246a946e9a36a41b3eaae859ad6c974c983c4036faf9ceaba",
    "modality": "c09dbdb8806c2411120933003d507797f9890df0444fd65c51fd296e8ddfb7ff",
    "pneumonia": "9233ba7fbe64a425b910a7677ec6b7a37cc4e0f564e777e5166db655f005b6af",
    "tb": "059cf8d4e1564c47ea7053808c68ae1a264ef6694bc27e9fd118c4b171ed2068",
}
