"""Screening rules that do not depend on a model's weights: metadata warnings, privacy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from desktop.app_logging import configure_logging, log_file_path
from desktop.cli import main
from desktop.engine.loading import load_scan
from desktop.engine.screening import metadata_warnings, patient_age_years
from tests.fixtures import write_cr_variant

SECRET_NAME = "Zoë^Łukasiewicz-Testpatient"
SECRET_ID = "MRN-99117733"


def test_dicom_header_contradicting_the_image_is_a_warning(tmp_path: Path):
    path = write_cr_variant(tmp_path / "ct.dcm", Modality="CT", BodyPartExamined="HAND")
    meta = load_scan(path).metadata
    assert (meta.modality, meta.body_part) == ("CT", "HAND")
    warnings = metadata_warnings(meta, "CXR", accepted_as_chest=True)
    assert any("Modality is CT" in w for w in warnings)
    assert any("BodyPartExamined is HAND" in w for w in warnings)


def test_a_body_part_that_is_no_dicom_term_is_never_quoted(tmp_path: Path):
    """BodyPartExamined is free text to a parser: a name written there ("JANE DOE", a valid
    CS value) was quoted in the warning every report carries. Only PS3.16 Annex L terms are
    quoted; anything else is described."""
    path = write_cr_variant(tmp_path / "n.dcm", Modality="CR", BodyPartExamined="JANE DOE")
    meta = load_scan(path).metadata
    assert meta.body_part == "JANE DOE"
    assert metadata_warnings(meta, "CXR", accepted_as_chest=True) == [
        "DICOM BodyPartExamined names a body part MedScreen does not recognise, "
        "but the image was judged a chest X-ray"
    ]
    knee = write_cr_variant(tmp_path / "k.dcm", Modality="CR", BodyPartExamined="KNEE")
    assert metadata_warnings(load_scan(knee).metadata, "CXR", accepted_as_chest=True) == [
        "DICOM BodyPartExamined is KNEE, but the image was judged a chest X-ray"
    ]


def test_chest_header_on_a_refused_image_is_a_warning(tmp_path: Path):
    path = write_cr_variant(tmp_path / "c.dcm", Modality="CR", BodyPartExamined="CHEST")
    meta = load_scan(path).metadata
    assert metadata_warnings(meta, "Hand", accepted_as_chest=False) == [
        "DICOM says chest radiograph (CR, CHEST) but the image was judged Hand: check the image"
    ]
    assert metadata_warnings(meta, "CXR", accepted_as_chest=True) == []


def test_metadata_warnings_name_no_model(tmp_path: Path):
    """Age and view are a model's scope (its manifest, issue 12), not a warning written here."""
    meta = load_scan(
        write_cr_variant(tmp_path / "a.dcm", PatientAge="045Y", ViewPosition="LL")
    ).metadata
    assert metadata_warnings(meta, "CXR", True) == []


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45.0), ("006M", 0.5), ("052W", 52 / 52.18), ("", None), ("abc", None)],
)
def test_patient_age(text, years):
    assert patient_age_years(text) == (None if years is None else pytest.approx(years))


def test_patient_identifiers_never_reach_logs_or_default_reports(tmp_path, stand_in_models, caplog):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_cr_variant(
        scans / "patient.dcm",
        SpecificCharacterSet="ISO_IR 192",  # UTF-8, so the accents are really stored
        PatientName=SECRET_NAME,
        PatientID=SECRET_ID,
    )
    (scans / "broken.dcm").write_bytes(b"DICM" * 10)  # an error row goes through logging too
    configure_logging(verbose=True, console=False)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    try:
        code = main(
            [
                "-v",
                "classify",
                str(scans),
                "--out",
                str(out),
                "--models",
                str(stand_in_models),
                "--report",
                "pdf,csv,json",
                "--quiet",
            ]
        )
    finally:
        for handler in logging.getLogger().handlers[:]:
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.getLogger().removeHandler(handler)
    assert code == 0
    texts = [caplog.text, log_file_path().read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8-sig") for p in out.glob("*.csv")]
    texts += [p.read_text(encoding="utf-8") for p in out.glob("*.json")]
    for text in texts:
        assert SECRET_NAME not in text and "Łukasiewicz" not in text and SECRET_ID not in text
    for name in (p.name for p in out.iterdir()):
        assert "Łukasiewicz" not in name and SECRET_ID not in name
    # with the opt-in, the identifier is there: the check above is not vacuous
    main(
        [
            "classify",
            str(scans),
            "--out",
            str(tmp_path / "with"),
            "--models",
            str(stand_in_models),
            "--include-identifiers",
            "--quiet",
        ]
    )
    opted_in = (tmp_path / "with" / "results.json").read_text(encoding="utf-8")
    assert SECRET_ID in opted_in and "Łukasiewicz" in opted_in
