"""Every package fasttn imports is declared in pyproject.toml."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# Import names whose distribution is called otherwise.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "cupy": "cupy-cuda12x", "openTSNE": "opentsne"}


def _imported_packages() -> dict:
    """Top-level names of every absolute import under fasttn/ (at module level or inside
    functions), mapped to a file that imports it."""
    found = {}
    for path in sorted((ROOT / "fasttn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(ROOT))
    return found


def _declared() -> dict:
    """Distribution name (lower case) -> where pyproject.toml declares it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    where = {}
    groups = {"dependencies": project["dependencies"],
              **{f"[{k}]": v for k, v in project["optional-dependencies"].items()}}
    for group, reqs in groups.items():
        for req in reqs:
            name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower()
            where.setdefault(name, group)
    return where


def test_every_third_party_import_is_declared():
    declared = _declared()
    missing = {}
    for name, path in _imported_packages().items():
        if name in sys.stdlib_module_names or name in ("fasttn", "__future__"):
            continue
        dist = DISTRIBUTIONS.get(name, name).lower()
        if dist not in declared:
            missing[name] = str(path)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_required_packages_are_not_only_in_extras():
    declared = _declared()
    for dist in ("numpy", "numba", "llvmlite", "scipy", "scikit-learn", "tqdm", "cotengra",
                 "threadpoolctl"):
        assert declared.get(dist) == "dependencies", dist
    assert declared["matplotlib"] != "dependencies"
    assert declared["torch"] == "[torch]" and declared["cupy-cuda12x"] == "[cuda]"


def _setup_commands() -> list:
    """The commands of the README's Set-up section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_setup_commands_in_order():
    commands = _setup_commands()
    assert len(commands) >= 2
    script = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    positions = [script.index(c) if c in script else -1 for c in commands]
    assert -1 not in positions, f".ci/run does not run {commands[positions.index(-1)]!r}"
    assert positions == sorted(positions), ".ci/run runs the README's commands out of order"
