"""A real kill-children run's report.html, opened in headless Chromium, shows its charts.

Chromium comes from Debian's ``chromium`` package (.ci/run installs it); without it the test
skips locally and fails under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need(what: str, found: object) -> None:
    if found:
        return
    message = f"{what} is not installed (Debian: apt-get install -y chromium; pip: taskq[report])"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _screenshot(page: Path, into: Path, profile: Path) -> None:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={into}", "--window-size=1200,2000",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert into.exists(), f"chromium wrote no screenshot ({done.returncode}): {done.stderr[-2000:]}"


def _share(colours: list[tuple[int, tuple[int, int, int]]], test: object) -> float:
    """The share of the pixels whose colour passes ``test``."""
    total = sum(count for count, _c in colours)
    return sum(count for count, c in colours if test(c)) / total  # type: ignore[operator]


def _near(colour: tuple[int, int, int], to: tuple[int, int, int], by: int = 40) -> bool:
    return all(abs(a - b) < by for a, b in zip(colour, to, strict=True))


def test_a_kill_children_report_renders_its_charts_in_chromium(stress_run, tmp_path):
    _need("chromium", CHROMIUM)
    try:
        from PIL import Image
    except ImportError:
        Image = None
    _need("Pillow (it comes with matplotlib)", Image)
    run = stress_run("--suite", "kill-children", "--broker", "sqlite://", "--duration", "3",
                     "--seed", "11",
                     "--cell", "transport=sqlite,pool=fair,max_tasks_per_child=0,acks=early")
    page = run.report_dir / "report.html"
    assert page.exists(), run.output
    assert page.read_text().count("<svg") >= 3, "matplotlib drew no charts"

    shot = tmp_path / "report.png"
    _screenshot(page, shot, tmp_path / "chromium-profile")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 24)
    ink = _share(colours, lambda c: min(c) < 200)
    # the charts' own blue (#1f77b4): the finished/s line, the histogram's bars
    blue = _share(colours, lambda c: _near(c, (0x1F, 0x77, 0xB4)))
    assert ink > 0.01, f"the page is blank: {ink:.2%} of its pixels are not white"
    assert blue > 0.0005, f"no chart is drawn: {blue:.3%} of the pixels are the charts' blue"
