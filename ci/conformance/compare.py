"""Compare the two halves of ci/celery-conformance.sh: per file, passed/failed/skipped for the
taskq worker and for Celery's worker (from their JUnit files), then every test that Celery's
worker passes and taskq's fails, with the first line of its failure. Exit 1 if there is one.

    python ci/conformance/compare.py OUT_DIR     (reads OUT_DIR/taskq.xml, OUT_DIR/celery.xml)
    python ci/conformance/compare.py OUT_DIR --expect FILE

With only taskq's half run (CI), ``--expect FILE`` names the tests taskq's worker is known to
fail (one pytest node id per line, ``#`` comments: each with its reason); exit 1 if it fails
any other test, so a regression shows without running Celery's half.

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


def expected_failures(path: Path) -> set[tuple[str, str]]:
    """The pytest node ids in ``path`` (``t/integration/test_x.py::class::test``; comments
    and blank lines skipped) as (file, test id) keys."""
    found = set()
    for line in path.read_text().splitlines():
        entry = line.split("  #", 1)[0].strip()
        if entry and not entry.startswith("#"):
            file, _, test = entry.partition("::")
            found.add((Path(file).stem, test))
    return found


def unexpected(taskq: dict[tuple[str, str], tuple[str, str]],
               expected: set[tuple[str, str]]) -> int:
    """Report taskq's failures not in ``expected`` (and expected ones that now pass)."""
    failed = {k for k, (state, _) in taskq.items() if state == "failed"}
    new = sorted(failed - expected)
    print(f"\n{len(new)} tests taskq's worker fails that are not known failures:")
    for module, test in new:
        print(f"  {module}::{test}: {taskq[(module, test)][1]}")
    fixed = sorted(k for k in expected & taskq.keys() if taskq[k][0] == "passed")
    if fixed:
        print(f"{len(fixed)} known failures pass now (take them off the list):")
        for module, test in fixed:
            print(f"  {module}::{test}")
    return 1 if new else 0


def main(out: Path, expect: Path | None = None) -> int:
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
    if expect is not None:
        return unexpected(halves.get("taskq", {}), expected_failures(expect))
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
    args = sys.argv[1:]
    expect_file = None
    if "--expect" in args:
        at = args.index("--expect")
        expect_file = Path(args[at + 1])
        del args[at:at + 2]
    sys.exit(main(Path(args[0] if args else "conformance-out"), expect_file))
