"""Issue 12 points 2 and 3: what the desk says a CD holds, and what it refuses and why.
Pure library tests: CDs are written into tmp_path by tests/cds.py, then scanned."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread

from app.cds import scan
from app.cds.scan import Limits, Problem, ScanResult, printable, scan_files, unpack_zip
from tests.cds import (
    Patient,
    StudySpec,
    datasets,
    dicom_bytes,
    lie_about_size,
    mark_encrypted,
    tree,
    two_studies,
    upload,
    write_fileset,
    write_folder,
    write_zip,
    zeros_zip,
    zip_entry,
)


def summary(result: ScanResult) -> list[tuple[str, str, list[tuple[str, list[str], list[int], int]]]]:
    """What the desk shows: patients, their studies (date, modalities, instances per series, total)."""
    return [
        (
            p.name,
            p.id,
            [(s.date, s.modalities, [se.instances for se in s.series], s.instances) for s in p.studies],
        )
        for p in result.patients
    ]


CLEAN = [("DOE^JANE", "CD100001", [("20240101", ["CT"], [3, 2], 5), ("20240301", ["MR"], [4], 4)])]


def test_clean_cd_with_dicomdir(tmp_path: Path) -> None:
    files = upload(write_fileset(tmp_path / "cd", datasets(two_studies())), tmp_path / "store")
    seen: list[tuple[int, int]] = []
    result = scan_files(files, progress=lambda done, total: seen.append((done, total)))
    assert summary(result) == CLEAN
    assert result.used_dicomdir is True
    assert result.problems == []
    assert result.files_seen == 10  # 9 instances and the DICOMDIR
    assert seen[-1] == (10, 10) and len(seen) == 10
    study = result.patients[0].studies[0]
    assert study.accession == "ACC1" and study.bytes == sum(
        os.path.getsize(p) for p in result.study_files(study.study_uid)
    )
    assert [se.number for se in study.series] == ["1", "2"]


def test_dicomdir_matched_whatever_the_case_and_separator(tmp_path: Path) -> None:
    """A Windows upload: backslashes, lower case names; the DICOMDIR still resolves."""
    files = upload(write_fileset(tmp_path / "cd", datasets(two_studies())), tmp_path / "store", sep="\\")
    files = {name.lower(): path for name, path in files.items()}
    result = scan_files(files)
    assert summary(result) == CLEAN and result.used_dicomdir and result.problems == []


def test_clean_cd_without_dicomdir(tmp_path: Path) -> None:
    files = upload(write_folder(tmp_path / "cd", datasets(two_studies())), tmp_path / "store")
    result = scan_files(files)
    assert summary(result) == CLEAN
    assert result.used_dicomdir is False
    assert result.problems == []
    assert result.files_seen == 9


def test_non_dicom_and_truncated_files_are_named_and_the_rest_scanned(tmp_path: Path) -> None:
    cd = write_folder(tmp_path / "cd", datasets(two_studies(), size=64))
    (cd / "REPORT.PDF").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    (cd / "README.TXT").write_text("Insert the CD and run VIEWER.EXE\n")
    whole = (cd / "IMAGES" / "IM1").read_bytes()
    (cd / "IMAGES" / "IM1").write_bytes(whole[: len(whole) // 2])  # cut inside the pixel data
    (cd / "IMAGES" / "IM5").write_bytes((cd / "IMAGES" / "IM5").read_bytes()[:700])  # cut in the header
    result = scan_files(upload(cd, tmp_path / "store"))
    assert sorted((p.name, p.reason) for p in result.problems) == [
        ("CD/IMAGES/IM1", "truncated: the file ends inside a data element"),
        ("CD/IMAGES/IM5", "truncated: the file ends inside a data element"),
        ("CD/README.TXT", "not a DICOM file"),
        ("CD/REPORT.PDF", "not a DICOM file"),
    ]
    assert summary(result) == [
        ("DOE^JANE", "CD100001", [("20240101", ["CT"], [2, 1], 3), ("20240301", ["MR"], [4], 4)])
    ]
    assert result.files_seen == 11


def test_file_without_preamble_is_read_when_it_is_a_dataset(tmp_path: Path) -> None:
    """Decision: no 128-byte preamble is accepted only for a file that starts like a dataset
    and has study and SOP instance UIDs; anything else is 'not a DICOM file'."""
    ds = datasets([StudySpec(series=[("CT", 1)])])[0]
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "RAW", implicit_vr=True, little_endian=True, enforce_file_format=False)
    (tmp_path / "JUNK").write_bytes(b"\x08\x00\x05\x00garbage that is not a dataset at all")
    (tmp_path / "JPEG").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100))
    result = scan_files({"CD/RAW": tmp_path / "RAW", "CD/JUNK": tmp_path / "JUNK", "CD/JPEG": tmp_path / "JPEG"})
    assert [(p.name, p.reason) for p in result.problems] == [
        ("CD/JUNK", "not a DICOM file"),
        ("CD/JPEG", "not a DICOM file"),
    ]
    assert summary(result) == [("DOE^JANE", "CD100001", [("20240101", ["CT"], [1], 1)])]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the bad UID, as it is written
def test_missing_uids_and_duplicate_copies(tmp_path: Path) -> None:
    good, no_study, bad_sop = datasets([StudySpec(series=[("CT", 3)])])
    del no_study.StudyInstanceUID
    bad_sop.SOPInstanceUID = "1.2.3.../etc/passwd"
    cd = write_folder(tmp_path / "cd", [good, no_study, bad_sop])
    (cd / "COPY").write_bytes((cd / "IMAGES" / "IM1").read_bytes())
    result = scan_files(upload(cd, tmp_path / "store"))
    assert sorted((p.name, p.reason) for p in result.problems) == [
        ("CD/IMAGES/IM1", "a second copy of 'CD/COPY' (the same SOP Instance UID)"),
        ("CD/IMAGES/IM2", "the Study Instance UID is missing"),
        ("CD/IMAGES/IM3", "the SOP Instance UID is not a valid UID"),
    ]
    assert summary(result)[0][2][0][3] == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the hostile file ID, as it is written
def test_dicomdir_pointing_outside_or_at_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cd = write_fileset(tmp_path / "cd", datasets(two_studies()))
    dicomdir = dcmread(cd / "DICOMDIR")
    images = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    images[0].ReferencedFileID = ["..", "..", "etc", "passwd"]
    missing = list(images[1].ReferencedFileID)
    dicomdir.save_as(cd / "DICOMDIR")
    (cd.joinpath(*missing)).unlink()

    store = tmp_path / "a" / "store"
    files = upload(cd, store)
    # A real DICOM file where '../../etc/passwd' lands if resolved against the stored
    # DICOMDIR's server folder: it must be neither opened nor shown.
    outside = tmp_path / "etc" / "passwd"
    outside.parent.mkdir()
    outside.write_bytes(dicom_bytes(datasets([StudySpec(series=[("CT", 1)], patient=Patient("OUTSIDE^EVE", "X9"))])[0],
                                    tmp_path))
    assert (store / ".." / ".." / "etc" / "passwd").resolve() == outside.resolve()
    opened: list[str] = []

    def spy(path, *args, **kwargs):  # noqa: ANN001, ANN202 - stands in for open()
        opened.append(os.fspath(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(scan, "open", spy, raising=False)
    result = scan_files(files)

    assert [(p.name, p.reason) for p in result.problems] == [
        ("CD/DICOMDIR", "the DICOMDIR points outside the CD ('../../etc/passwd')"),
        ("CD/DICOMDIR", f"the DICOMDIR names '{'/'.join(missing)}' but the CD has no such file"),
    ]
    assert result.used_dicomdir is True
    # The first image is no longer referenced but is on the CD: still scanned as an extra file.
    # (The second is gone; which study it was in depends on the FileSet's record order.)
    assert sum(s.instances for s in result.patients[0].studies) == 8
    assert [s.date for s in result.patients[0].studies] == ["20240101", "20240301"]
    assert set(opened) <= {str(p) for p in files.values()}
    assert "OUTSIDE^EVE" not in result.to_json()


def test_unreadable_dicomdir_falls_back_to_every_file(tmp_path: Path) -> None:
    cd = write_fileset(tmp_path / "cd", datasets(two_studies()))
    (cd / "DICOMDIR").write_bytes((cd / "DICOMDIR").read_bytes()[:500])
    result = scan_files(upload(cd, tmp_path / "store"))
    assert [(p.name, p.reason) for p in result.problems] == [
        ("CD/DICOMDIR", "the DICOMDIR is truncated: the file ends inside a data element; every file was read instead")
    ]
    assert summary(result) == CLEAN and result.used_dicomdir is False


def test_zip_with_hostile_entries(tmp_path: Path) -> None:
    instances = datasets(two_studies())
    good = [(f"CD/IMAGES/IM{i}", dicom_bytes(ds, tmp_path)) for i, ds in enumerate(instances, start=1)]
    hostile = [
        ("../x", b"climb"),
        ("CD/../../x2", b"climb"),
        ("..\\x3", b"climb"),
        ("/etc/cron.d/x", b"absolute"),
        ("C:\\Windows\\x", b"drive"),
        (zip_entry("CD/link", link=True), b"/etc/passwd"),
        ("CD/\x1b[31mred\nname", b"control"),
        ("CD/secret", b"locked"),
    ]
    archive = write_zip(tmp_path / "cd.zip", good[:4] + hostile + good[4:])
    mark_encrypted(archive, "CD/secret")
    dest = tmp_path / "work" / "dest"
    before = tree(tmp_path)

    stored, problems = unpack_zip(archive, dest)

    assert [(p.name, p.reason) for p in problems] == [
        ("../x", "zip entry climbs out of the CD ('../x')"),
        ("CD/../../x2", "zip entry climbs out of the CD ('CD/../../x2')"),
        ("..\\x3", "zip entry climbs out of the CD ('..\\x3')"),
        ("/etc/cron.d/x", "zip entry is an absolute path"),
        ("C:\\Windows\\x", "zip entry is an absolute path"),
        ("CD/link", "zip entry is a link"),
        ("CD/\\x1b[31mred\\x0aname", "the file name holds control characters"),
        ("CD/secret", "zip entry is encrypted"),
    ]
    assert sorted(stored) == sorted(name for name, _ in good)
    assert all(path.parent == dest for path in stored.values())
    assert tree(tmp_path) - before == {dest.parent, dest, *stored.values()}
    assert not (tmp_path / "x").exists() and not Path("/x").exists()
    assert summary(scan_files(stored)) == CLEAN


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "cd.zip").write_bytes(b"%PDF-1.4 not a zip")
    assert unpack_zip(tmp_path / "cd.zip", tmp_path / "dest") == (
        {}, [Problem("cd.zip", "not a zip archive (or a damaged one)")]
    )


def test_zip_bomb_past_the_total_is_refused_whole(tmp_path: Path) -> None:
    good = dicom_bytes(datasets([StudySpec(series=[("CT", 1)])])[0], tmp_path)
    archive = write_zip(tmp_path / "bomb.zip", [("CD/IM1", good)])
    zeros_zip(tmp_path / "zeros.zip", [("CD/ZEROS", 50 * 1024**2)])
    assert archive.stat().st_size < 10_000 and (tmp_path / "zeros.zip").stat().st_size < 100_000
    dest = tmp_path / "dest"

    stored, problems = unpack_zip(tmp_path / "zeros.zip", dest, Limits(max_total_bytes=20 * 1024**2, max_ratio=10**6))

    assert (stored, problems) == ({}, [Problem("zeros.zip", "the archive expands past the 20 MB limit")])
    assert list(dest.iterdir()) == []


def test_zip_ratio_bomb_is_refused_whole(tmp_path: Path) -> None:
    good = dicom_bytes(datasets([StudySpec(series=[("CT", 1)])])[0], tmp_path)
    archive = write_zip(tmp_path / "ratio.zip", [("CD/IM1", good), ("CD/PAD", bytes(20 * 1024**2))])
    dest = tmp_path / "dest"

    stored, problems = unpack_zip(archive, dest)

    assert stored == {} and len(problems) == 1
    assert problems[0].name == "ratio.zip"
    assert problems[0].reason.startswith("compression ratio ")
    assert problems[0].reason.endswith(":1 is past the limit of 100:1 (a zip bomb?)")
    assert list(dest.iterdir()) == []


def test_zip_with_too_many_entries_is_refused_whole(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "many.zip", [(f"CD/F{i}", b"x") for i in range(51)])
    assert unpack_zip(archive, tmp_path / "dest", Limits(max_files=50)) == (
        {}, [Problem("many.zip", "more than 50 files")]
    )
    assert unpack_zip(archive, tmp_path / "dest2", Limits(max_files=51))[1] == []


def test_zip_header_lying_about_the_size_still_stops_at_the_limit(tmp_path: Path) -> None:
    """The central directory says 100 KB; the entry holds 5 MB. Nothing past the declared
    size is written (zipfile stops there and the CRC then fails): the entry is refused."""
    good = dicom_bytes(datasets([StudySpec(series=[("CT", 1)])])[0], tmp_path)
    archive = write_zip(tmp_path / "liar.zip", [("CD/IM1", good), ("CD/BIG", os.urandom(5 * 1024**2))])
    lie_about_size(archive, "CD/BIG", 100 * 1024)
    dest = tmp_path / "dest"

    stored, problems = unpack_zip(archive, dest, Limits(max_total_bytes=1024**2))

    assert problems == [Problem("CD/BIG", "zip entry is damaged (its size or checksum does not match)")]
    assert list(stored) == ["CD/IM1"]
    assert sum(p.stat().st_size for p in dest.iterdir()) == len(good)


def test_three_thousand_files(tmp_path: Path) -> None:
    started = time.monotonic()
    specs = [StudySpec(series=[("CT", 1000), ("CT", 1000)]), StudySpec(series=[("MR", 1000)], date="20240301")]
    files = upload(write_folder(tmp_path / "cd", datasets(specs, size=4)), tmp_path / "store")
    written = time.monotonic()
    calls = 0

    def progress(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        assert total == 3000 and done == calls

    result = scan_files(files, progress=progress)
    scanned = time.monotonic()

    assert summary(result) == [
        ("DOE^JANE", "CD100001", [("20240101", ["CT"], [1000, 1000], 2000), ("20240301", ["MR"], [1000], 1000)])
    ]
    assert calls == 3000 and result.problems == []
    text = result.to_json()
    assert len(text) < 200_000, len(text)
    assert len(ScanResult.from_json(text).study_files(specs[0].uid)) == 2000
    assert scanned - written < 15, f"scan took {scanned - written:.1f} s (writing {written - started:.1f} s)"


def test_too_many_files_or_bytes_on_a_folder_cd(tmp_path: Path) -> None:
    files = upload(write_folder(tmp_path / "cd", datasets(two_studies())), tmp_path / "store")
    result = scan_files(files, Limits(max_files=8))
    assert result.problems == [Problem("(the CD)", "more than 8 files")] and result.patients == []
    result = scan_files(files, Limits(max_total_bytes=4096))
    assert result.problems == [Problem("(the CD)", "the CD holds more than the 4 KB limit")]


def test_two_patients(tmp_path: Path) -> None:
    other = Patient("ROE^RICHARD", "CD200002", "19650505")
    specs = [StudySpec(series=[("CT", 2)]), StudySpec(series=[("CR", 1)], patient=other, date="20230505")]
    result = scan_files(upload(write_fileset(tmp_path / "cd", datasets(specs)), tmp_path / "store"))
    assert summary(result) == [
        ("DOE^JANE", "CD100001", [("20240101", ["CT"], [2], 2)]),
        ("ROE^RICHARD", "CD200002", [("20230505", ["CR"], [1], 1)]),
    ]
    assert [p.birth_date for p in result.patients] == ["19700101", "19650505"]


def test_json_round_trip_and_study_files(tmp_path: Path) -> None:
    specs = two_studies()
    cd = write_fileset(tmp_path / "cd", datasets(specs))
    (cd / "NOTES.TXT").write_text("not an image")
    files = upload(cd, tmp_path / "store")
    result = scan_files(files)

    again = ScanResult.from_json(result.to_json())

    assert again == result
    ct = again.study_files(specs[0].uid)
    assert len(ct) == 5 and len(set(ct)) == 5
    assert set(ct) <= {str(p) for p in files.values()}
    assert {dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in ct} == {specs[0].uid}
    assert again.study_files("1.2.3.4") == []
    assert again.problems == [Problem("CD/NOTES.TXT", "not a DICOM file")]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("IMAGES/IM1", "IMAGES/IM1"),
        ("a\nb", "a\\x0ab"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("bad\udcffbyte", "bad\\xffbyte"),
        ("Ünïcödé ΑΒΓ", "Ünïcödé ΑΒΓ"),
    ],
    ids=["plain", "newline", "terminal_escape", "bidi_override", "undecodable_byte", "letters_kept"],
)
def test_printable(name: str, shown: str) -> None:
    assert printable(name) == shown


def test_folder_name_with_control_characters_is_not_read(tmp_path: Path) -> None:
    files = upload(write_folder(tmp_path / "cd", datasets([StudySpec(series=[("CT", 1)])])), tmp_path / "store")
    (path,) = files.values()
    result = scan_files({"CD/IM\r\n1": path})
    assert result.problems == [Problem("CD/IM\\x0d\\x0a1", "the file name holds control characters")]
    assert result.patients == []


def test_bad_values_are_not_logged_and_come_out_plain(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pydicom logs a value it finds invalid, with the value: not while the desk reads a CD
    (issue 11.6). A value with control characters is shown escaped, a bad date as none."""
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        (ds,) = datasets([StudySpec(series=[("CT", 1)], patient=Patient("ROE^R" + "X" * 70, "CD\x1b[2J9"))])
        ds.PatientBirthDate = "1970-01-01"
        cd = write_folder(tmp_path / "cd", [ds])
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    result = scan_files(upload(cd, tmp_path / "store"))

    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []
    (patient,) = result.patients
    assert (patient.id, patient.birth_date) == ("CD\\x1b[2J9", "")
    assert patient.name.startswith("ROE^RXXX")


def test_sequences_nested_deeper_than_any_real_file_are_refused(tmp_path: Path) -> None:
    """Deep nesting crashes readers (pydicom#2330 raises RecursionError): named, not read.
    40 levels of undefined-length Digital Signatures Sequences (FFFA,FFFA) after the pixels."""
    cd = write_folder(tmp_path / "cd", datasets([StudySpec(series=[("CT", 1)])]))
    undefined = b"\xff\xff\xff\xff"
    opening = (b"\xfa\xff\xfa\xffSQ\x00\x00" + undefined + b"\xfe\xff\x00\xe0" + undefined) * 40
    closing = (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * 40
    with open(cd / "IMAGES" / "IM1", "ab") as fh:
        fh.write(opening + closing)
    result = scan_files(upload(cd, tmp_path / "store"))
    assert result.problems == [Problem("CD/IMAGES/IM1", "damaged: sequences nested more than 32 deep")]
    assert result.patients == []


def test_json_keeps_paths_from_two_folders(tmp_path: Path) -> None:
    """Loose files and an unpacked zip side by side: every path comes back as it was."""
    specs = two_studies()
    instances = datasets(specs)
    files = upload(write_folder(tmp_path / "cd", instances[:4]), tmp_path / "up" / "files")
    entries = [(f"Z/IM{i}", dicom_bytes(ds, tmp_path)) for i, ds in enumerate(instances[4:])]
    archive = write_zip(tmp_path / "cd.zip", entries)
    stored, problems = unpack_zip(archive, tmp_path / "up" / "unpacked")
    assert problems == []
    result = scan_files({**files, **stored})
    again = ScanResult.from_json(result.to_json())
    assert again == result
    assert sorted(again.study_files(specs[0].uid) + again.study_files(specs[1].uid)) == sorted(
        str(p) for p in [*files.values(), *stored.values()]
    )


def test_unpacking_again_into_the_same_folder_works(tmp_path: Path) -> None:
    """A retried scan job unpacks the same zip into the same folder."""
    entries = [(f"CD/IM{i}", dicom_bytes(ds, tmp_path)) for i, ds in enumerate(datasets(two_studies()))]
    archive = write_zip(tmp_path / "cd.zip", entries)
    first = unpack_zip(archive, tmp_path / "dest")
    assert unpack_zip(archive, tmp_path / "dest") == first and first[1] == []
    assert summary(scan_files(first[0])) == CLEAN
