"""Package digests of the models bundled in ``assets/models``: GENERATED, do not edit.

Rewritten by ``python -m export.sign --key PATH assets/models/*.json`` after a release export.
Each value is :func:`desktop.engine.trust.package_digest` of the manifest and its model file;
the registry refuses a bundled package whose digest differs, or whose id is not listed here.
"""

BUNDLED_PINS: dict[str, str] = {
    "modality": "43c92bdb915bb280e84acfa1cf80b26d4e291cc05064371549743c71f1cf4cf6",
    "pneumonia": "866788d2dd515aab23d9f9f7ad3923b0dcf68e59bfd5e972dd9a26654d6a8fc8",
    "tb": "7a397b890263b0e2c85d1202f6515d1da01a17a54995e64e2d1f694c5375f9ea",
}
