"""Compare the two halves of ci/celery-conformance.sh: per file, passed/failed/skipped for the
taskq worker and for Celery's worker (from their JUnit files), then every test that Celery's
worker passes and taskq's fails, with the first line of its failure. Exit 1 if there is one.

    python ci/conformance/compare.py OUT_DIR     (reads OUT_DIR/taskq.xml, OUT_DIR/celery.xml)

A test is counted once, by its test id: subtests (pytest-subtests writes one JUnit entry per
subtest) make it failed if any of them failed. xfail/xpass count as skipped here.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

FILES = ("test_tasks", "test_inspect", "test_canvas")


def outcomes(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(file, test id) -> (passed | failed | skipped, first line of the failure)."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for case in ET.parse(path).iter("testcase"):
        classname = case.get("classname") or ""
        parts = classname.split(".")
        module = next((p for p in parts if p.startswith("test_")), classname)
        key = (module, f"{'.'.join(parts[parts.index(module) + 1:])}::{case.get('name')}"
               if module in parts else str(case.get("name")))
        state, why = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
                lines = (child.get("message") or child.text or "").strip().splitlines()
                why = lines[0][:160] if lines else ""
            elif child.tag == "skipped" and state == "passed":
                state = "skipped"
        if found.get(key, ("",))[0] != "failed":  # a failed subtest fails the test
            found[key] = (state, why)
    return found


def main(out: Path) -> int:
    halves = {w: outcomes(out / f"{w}.xml") for w in ("taskq", "celery")
              if (out / f"{w}.xml").exists()}
    for worker, found in halves.items():
        counts: dict[str, Counter[str]] = {f: Counter() for f in FILES}
        for (module, _), (state, _) in found.items():
            counts.setdefault(module, Counter())[state] += 1
        for module, c in counts.items():
            if c:
                print(f"{worker:6} {module:13} passed {c['passed']:3}  failed {c['failed']:3}  "
                      f"skipped {c['skipped']:3}")
    if len(halves) < 2:
        return 0
    taskq, celery = halves["taskq"], halves["celery"]
    behind = sorted(k for k, (state, _) in celery.items()
                    if state == "passed" and taskq.get(k, ("missing",))[0] != "passed")
    print(f"\n{len(behind)} tests Celery's worker passes and taskq's does not:")
    for module, test in behind:
        print(f"  {module}::{test}: {taskq.get((module, test), ('missing', ''))[1]}")
    return 1 if behind else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "conformance-out")))
