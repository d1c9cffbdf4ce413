"""docs/reliability.md names a test for each guarantee: every file and test it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_reliability_page_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = 0
    for cell in re.findall(r"\| ([^|]*`[^|]*) \|\n", text):
        current = None
        for ref in re.findall(r"`([^`]+)`", cell):
            file, _, test = ref.rpartition("::") if "::" in ref else (ref, "", "")
            if file.endswith(".py"):
                current = ROOT / "tests" / file
                assert current.is_file(), f"docs/reliability.md names {file}, which is not in tests/"
            if test:
                assert current is not None, f"docs/reliability.md: {ref} follows no test file"
                assert re.search(rf"^def {re.escape(test)}\(", current.read_text(), re.M), \
                    f"docs/reliability.md names {test}, which {current.relative_to(ROOT)} does not define"
                named += 1
    assert named >= 40
