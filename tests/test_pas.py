"""PAS register import: good rows load, bad rows are reported with line and reason."""

from __future__ import annotations

import sqlalchemy as sa

from app.extensions import db
from app.patients.models import Patient

HEADER = "s_number,nhs_number,family_name,given_name,dob,gender,address_line1,address_line2,town,county,postcode\n"


def _write(tmp_path, body: str, name: str = "pas.csv"):
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return str(path)


def _s_numbers() -> list[str]:
    return list(db.session.scalars(sa.select(Patient.s_number).order_by(Patient.s_number)))


def test_good_rows_load_and_bad_rows_are_named_by_line(runner, tmp_path):
    csv_path = _write(
        tmp_path,
        "S1000001,999 000 0018,SMITH,Margaret,1948-03-14,Female,12 Welford Road,,Leicester,Leics,le2 7aa\n"  # line 2 ok
        "S100002,,JONES,Ann,1950-01-01,,1 Road,,Town,,LE1 1AA\n"  # line 3 bad S number
        "S1000003,9990000019,BROWN,Bob,1960-02-02,,1 Road,,Town,,LE1 1AA\n"  # line 4 bad check digit
        "S1000004,,GREEN,Gail,31/12/1970,,1 Road,,Town,,LE1 1AA\n"  # line 5 ok, UK date
        "S1000005,,WHITE,Will,not-a-date,,1 Road,,Town,,LE1 1AA\n"  # line 6 bad date
        "S1000006,,,Nameless,1970-01-01,,1 Road,,Town,,LE1 1AA\n"  # line 7 no family name
        "S1000007,9990000026,BLACK,Bea,2990-01-01,,1 Road,,Town,,LE1 1AA\n"  # line 8 DOB in future
        "S1000001,,SMITH,Duplicate,1948-03-14,,,,,,\n",  # line 9 repeats line 2
    )
    result = runner.invoke(args=["pas", "import", csv_path])
    assert result.exit_code == 1  # some rows were refused: the operator must look
    output = result.output
    assert "2 added, 0 updated, 6 rejected" in output
    assert "line 3: s_number: An S number is the letter S followed by 7 digits" in output
    assert "line 4: nhs_number: This is not a valid NHS number" in output
    assert "line 6: dob 'not-a-date' is not a date" in output
    assert "line 7: family_name is empty" in output
    assert "line 8: dob is in the future" in output
    assert "line 9: s_number S1000001 repeats line 2" in output
    assert _s_numbers() == ["S1000001", "S1000004"]
    smith = db.session.scalar(sa.select(Patient).where(Patient.s_number == "S1000001"))
    assert smith.nhs_number == "9990000018" and smith.postcode == "LE2 7AA"


def test_import_again_updates_instead_of_duplicating(runner, tmp_path):
    first = _write(tmp_path, "S1000001,,SMITH,Margaret,1948-03-14,,12 Welford Road,,Leicester,,LE2 7AA\n", "a.csv")
    assert runner.invoke(args=["pas", "import", first]).exit_code == 0
    second = _write(tmp_path, "S1000001,9990000018,SMITH,Margaret,1948-03-14,,3 New Street,,Leicester,,LE1 5AA\n",
                    "b.csv")
    result = runner.invoke(args=["pas", "import", second])
    assert result.exit_code == 0 and "0 added, 1 updated, 0 rejected" in result.output
    patient = db.session.scalar(sa.select(Patient))
    db.session.refresh(patient)
    assert patient.address_line1 == "3 New Street" and patient.nhs_number == "9990000018"


def test_nhs_number_belonging_to_another_patient_is_refused(runner, tmp_path):
    csv_path = _write(
        tmp_path,
        "S1000001,9990000018,SMITH,Margaret,1948-03-14,,1 Road,,Town,,LE1 1AA\n"
        "S1000002,9990000018,JONES,Ann,1950-01-01,,1 Road,,Town,,LE1 1AA\n",
    )
    result = runner.invoke(args=["pas", "import", csv_path])
    assert "line 3: nhs_number already belongs to S1000001" in result.output
    assert _s_numbers() == ["S1000001"]


def test_missing_columns_and_binary_files_are_reported_not_crashed(runner, tmp_path):
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("s_number,name\nS1000001,Smith\n")
    result = runner.invoke(args=["pas", "import", str(bad_header)])
    assert result.exit_code == 1
    assert ("The header is wrong: missing column(s): nhs_number, family_name, given_name, dob, gender, "
            "address_line1, address_line2, town, county, postcode; column(s) the extract does not have: name"
            in result.output.replace("\n", " ")) and "Nothing was imported" in result.output
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    result = runner.invoke(args=["pas", "import", str(binary)])
    assert result.exit_code != 0 and "is not UTF-8 text" in result.output
    assert _s_numbers() == []


def test_row_with_extra_fields_is_refused(runner, tmp_path):
    csv_path = _write(tmp_path, "S1000001,,SMITH,Margaret,1948-03-14,,1 Road,,Town,,LE1 1AA,EXTRA\n")
    result = runner.invoke(args=["pas", "import", csv_path])
    assert "line 2: row has more fields than the header" in result.output
