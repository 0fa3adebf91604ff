"""Fill one chapter's cache for the series it is given, through the book's own memoized functions
(``python THIS_FILE --module p2ch11.dsets --width 32,48,48``, run from the book's folder by `provision cache`).

It reads series UIDs on stdin, one a line, and for each calls the chapter's ``getCtRawCandidate`` for every
candidate of that series with the arguments the book's own dataset uses (so the book's training finds
the very same keys), then any per-series function its prepcache calls (chapter 13's ``getCtSampleSize``).
The scan is read once (``getCt`` keeps the last one). One JSON line per series on stdout: entries, misses,
seconds, or the error that series met; the others go on. Kept free of imports from the package (any
interpreter, a venv's too, runs it by path, like ``smoke_child.py``).
"""

import argparse
import importlib
import json
import sys
import time
import traceback
from collections import defaultdict
from typing import Any


def main(argv: list) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", required=True, help="the chapter's dsets module, e.g. p2ch11.dsets")
    parser.add_argument("--width", required=True, help="the crop size the chapter's dataset asks for, e.g. 32,48,48")
    parser.add_argument("--per-series", default="", help="memoized functions called once per series, comma-separated")
    opts = parser.parse_args(argv)
    sys.path.insert(0, "")  # the book's packages, as `python -m` from its folder would see them
    dsets = importlib.import_module(opts.module)
    width = tuple(int(x) for x in opts.width.split(","))
    per_series = [getattr(dsets, name) for name in opts.per_series.split(",") if name]
    by_series = defaultdict(list)
    for candidate in dsets.getCandidateInfoList():
        by_series[candidate.series_uid].append(candidate)
    real_get_ct = dsets.getCt
    reads = [0]

    def counting_get_ct(series_uid: str) -> Any:  # a cache miss computes its crop from the scan: count those
        reads[0] += 1
        return real_get_ct(series_uid)

    setattr(dsets, "getCt", counting_get_ct)  # noqa: B010 - the book's module, replaced for this process only
    print(json.dumps({"ready": True, "series": len(by_series)}), flush=True)
    for line in sys.stdin:
        uid = line.strip()
        if not uid:
            continue
        start = time.monotonic()
        reads[0] = 0
        try:
            for candidate in by_series.get(uid, []):
                dsets.getCtRawCandidate(candidate.series_uid, candidate.center_xyz, width)
            for function in per_series:
                function(uid)
        except Exception as exc:  # noqa: BLE001 - one series' failure is reported, the others go on
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(json.dumps({"series": uid, "error": last}), flush=True)
            continue
        print(json.dumps({"series": uid, "entries": len(by_series.get(uid, [])) + len(per_series), "misses": reads[0],
                          "seconds": round(time.monotonic() - start, 3)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
