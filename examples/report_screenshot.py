"""The README's picture of report.html: a run's evaluation report, rendered by headless Chromium.

    .venv/bin/python examples/report_screenshot.py [RUN_DIR] [PNG]     # default: runs/fashion_mnist docs/report.png

Evaluates the run first (`sft eval`) when it has no evaluation yet. Chromium is the Debian package (`make data`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from sft.tasks import task_of_run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--virtual-time-budget=5000", "--hide-scrollbars"]


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "shot.png"
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/user", f"--window-size={width},{height}",
                        f"--screenshot={shot}", page.resolve().as_uri()], check=True, capture_output=True, timeout=300,
                       cwd=profile)
        png.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as im:  # a 256-colour palette: a third of the size, the same look for figures and text
            im.convert("RGB").quantize(256).save(png, optimize=True)


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion_mnist")
    png = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/report.png")
    page = run / "eval" / "report.html"
    if not page.exists():
        task = task_of_run(run)
        task.evaluate(run, None, None, task.options["eval"](top_losses=16), overwrite=False, batch_size=128,
                      progress=False)
    screenshot(page, png)
    print(f"{png}: screenshot of {page}")


if __name__ == "__main__":
    main()
