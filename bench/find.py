"""Listing a study's instances by C-FIND: the desk against DCMTK's findscu, same Orthanc, same run.

Run on demand, not by the test suite:

    .venv/bin/python bench/find.py [--instances 600] [--series 3] [--runs 5] [--tmp-dir /tmp]

Before every retrieval the engine lists the source's instances, and after every send the
destination's (`scu.list_instances`, `scu.find_instances`: SERIES level, then IMAGE level per
series); issue 15's end-to-end profile found these listings a large share of an export's and
an import's CPU. Here: a generated CT study (64 x 64, --series series) stored in an Orthanc of
the bench's own; (a) `scu.list_instances` in this process, wall and CPU seconds; (b) findscu
asking the same IMAGE-level query for each series (one process per series, as the desk's one
association asks them in turn; the SERIES query left out, to DCMTK's advantage). Medians of
--runs after one warm-up each. Checked: every run lists every instance. No bar: the figures
are for the report; the desk's CPU is what the end-to-end bench (bench/receive.py) feels.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's
from bench.support import start_orthanc, stop_process  # noqa: E402 - after the repository is on sys.path

OUR_AE, PACS_AE = "IEPDESK", "UHLPACS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tmp-dir", default=None)
    args = parser.parse_args(argv)

    from pydicom import dcmread

    from app.dicom import scu
    from app.dicom.ae import DEFAULT_CONFIG, Node
    from app.dicom.synth import make_study

    tmp = Path(tempfile.mkdtemp(prefix="bench-find-", dir=args.tmp_dir))
    pacs = None
    try:
        pacs = start_orthanc(tmp / "pacs", PACS_AE, {"desk": (OUR_AE, "127.0.0.1", 9)})
        node = Node(PACS_AE, "127.0.0.1", pacs.port)
        per_series = max(1, args.instances // args.series)
        paths = make_study(tmp / "study", patient_id="BENCH-FIND", patient_name="BENCH^FIND", birth_date="19700101",
                           study_date="20240101", n_series=args.series, n_per_series=per_series, rows=64, cols=64)
        if not scu.send_files(node, paths, config=DEFAULT_CONFIG).ok:
            print("FAIL: the study could not be stored in Orthanc")
            return 2
        study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        walls, cpus = [], []
        listed: list[scu.InstanceInfo] = []
        for run in range(args.runs + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            listed = scu.list_instances(node, study_uid, config=DEFAULT_CONFIG)
            if run:
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            if len(listed) != len(paths):
                print(f"FAIL: the desk listed {len(listed)} of {len(paths)} instances")
                return 2
        series = sorted({i.series_uid for i in listed})
        dcmtk = []
        for run in range(args.runs + 1):
            wall = time.perf_counter()
            for uid in series:
                subprocess.run(["findscu", "-S", "-aet", OUR_AE, "-aec", PACS_AE,  # noqa: S607 - DCMTK on PATH
                                "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study_uid}",
                                "-k", f"SeriesInstanceUID={uid}", "-k", "SOPInstanceUID", "-k", "SOPClassUID",
                                "-k", "InstanceNumber", "127.0.0.1", str(pacs.port)],
                               check=True, capture_output=True)
            if run:
                dcmtk.append(time.perf_counter() - wall)
        desk, theirs = statistics.median(walls), statistics.median(dcmtk)
        print(f"list_instances, {len(paths)} instances in {len(series)} series (median of {args.runs}):")
        print(f"  desk    {desk * 1000:7.0f} ms wall, {statistics.median(cpus) * 1000:5.0f} ms CPU")
        print(f"  findscu {theirs * 1000:7.0f} ms wall ({len(series)} processes, IMAGE level only)")
        print(f"  desk / findscu wall: {desk / theirs:.2f}")
        return 0
    finally:
        if pacs is not None:
            stop_process(pacs.proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
