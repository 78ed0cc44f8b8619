"""Every reference to docs/math.md in the repository points at a section that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATH = ROOT / "docs" / "math.md"
SOURCES = ("README.md", "CONTRIBUTING.md", "pyproject.toml", "csrc", "python", "tests", "benchmarks", "examples")
SUFFIXES = {".py", ".h", ".cuh", ".cpp", ".cu", ".md", ".toml"}
# "docs/math.md §3", "math.md §1", "docs/math.md, "Numerics"": a section number or a quoted heading
REFERENCE = re.compile(r"math\.md(?:`|\))?,?\s*(?:§(\d+)(?:\.(\d+))?|\"([^\"]+)\")?")


def _files():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in path.rglob("*") if p.suffix in SUFFIXES and "build" not in p.parts)


def _scanned():
    return (path for path in _files() if path.name != Path(__file__).name)  # this file quotes bad examples


def test_math_md_exists_and_every_reference_names_a_section_it_has():
    text = MATH.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", text, flags=re.M))
    subsections = set(re.findall(r"^### (\d+\.\d+) ", text, flags=re.M))
    titles = set(re.findall(r"^#+ (?:[\d.]+ )?(.+)$", text, flags=re.M))
    found, bad = 0, []
    for path in _scanned():
        for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if "math.md" not in line or "shared/docs" in line:
                continue
            for match in REFERENCE.finditer(line):
                found += 1
                section, sub, title = match.groups()
                ok = (
                    (section is None or section in sections)
                    and (sub is None or f"{section}.{sub}" in subsections)
                    and (title is None or any(t.startswith(title) for t in titles))
                )
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert found > 20 and not bad, bad


def test_no_reference_points_outside_the_repository():
    outside = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in _scanned()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        if "shared/docs/math.md" in line
    ]
    assert not outside, outside
