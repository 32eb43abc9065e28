"""Run the shared test vectors (tests/vectors/*.json) under whichever Python runs this file.

Each vector file `NAME.json` holds {"module": ..., "cases": [{"id": ..., "check": ..., ...}]}; its
checks live in `check_NAME.py` as a CHECKS dict of functions that take the case and raise
AssertionError (or any error) on failure. pytest calls `run_case` directly under CPython; under
MicroPython, `main` runs every case and prints one result line per case, prefixed with RESULT_TAG,
which pytest reads back so each case is its own test there too.
"""

import json

RESULT_TAG = "@@vector "


def load_vectors(path):
    with open(path) as fh:
        return json.load(fh)


def checks_for(stem):
    module = __import__("check_" + stem)
    return module.CHECKS


def run_case(checks, case):
    name = case["check"]
    if name not in checks:
        raise AssertionError("case %s names an unknown check %r" % (case["id"], name))
    checks[name](case)


def _describe(exc):
    try:
        import io
        import sys

        buf = io.StringIO()
        sys.print_exception(exc, buf)  # MicroPython only; CPython raises AttributeError
        return buf.getvalue()
    except (AttributeError, ImportError):
        return "%s: %s" % (type(exc).__name__, exc)


def main(vector_dir, stems):
    for stem in stems:
        vectors = load_vectors(vector_dir + "/" + stem + ".json")
        try:
            checks = checks_for(stem)
        except Exception as exc:  # noqa: BLE001 - an import failure fails every case in the file
            checks, import_error = None, _describe(exc)
        for case in vectors["cases"]:
            result = {"file": stem, "id": case["id"], "ok": True, "error": ""}
            try:
                if checks is None:
                    raise ImportError("check_%s.py failed to import: %s" % (stem, import_error))
                run_case(checks, case)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
                result["ok"] = False
                result["error"] = _describe(exc)
            print(RESULT_TAG + json.dumps(result))
