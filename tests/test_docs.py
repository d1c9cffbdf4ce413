"""The docs hold together: docs/reliability.md names tests that exist, every relative link resolves, README.md
stays a front door (at most 220 lines, short table cells), and no page or bench docstring keeps measurement history."""

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


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_points_to_a_file_and_heading_that_exist():
    checked = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{doc.relative_to(ROOT)}: no heading #{anchor} in {path}"
            checked += 1
    assert checked >= 20


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    assert readme.startswith("# sft") and "make demo" in readme and "make test" in readme
    for doc in ("README.md", "docs/benchmarks.md"):
        for row in re.findall(r"^\|.*\|$", (ROOT / doc).read_text(), re.M):
            for cell in row.strip("|").split(" | "):
                assert len(cell) <= 220, f"{doc}: a table cell of {len(cell)} characters: {cell[:80]}..."


HISTORY = re.compile(r"\bsession \d|\blast session\b|\ban earlier run\b|\bearlier runs\b|\bused to\b|"
                     r"\bprevious default\b|\bthe earlier defaults?\b", re.I)


def test_no_measurement_history_in_the_docs_or_the_bench_docstrings():
    import ast
    texts = {str(doc.relative_to(ROOT)): doc.read_text() for doc in DOCS}
    for bench in sorted((ROOT / "bench").glob("*.py")):
        texts[f"bench/{bench.name}"] = ast.get_docstring(ast.parse(bench.read_text())) or ""
    for name, text in texts.items():
        found = HISTORY.search(text)
        assert not found, f"{name} holds history ({found.group(0)!r}): results belong in docs/benchmarks.md"
