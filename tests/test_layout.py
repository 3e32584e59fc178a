"""The layout table (docs/design.md) names every module, in the row of its folder; the
README and the docs point nowhere outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_rows() -> dict[str, str]:
    design = (ROOT / "docs" / "design.md").read_text()
    section = design.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1].startswith("`"):
            rows[cells[1]] = cells[2]
    return rows


def test_every_tunnel_module_is_in_the_layout_table():
    rows = layout_rows()
    missing = []
    for module in sorted((ROOT / "tunnel").rglob("*.py")):
        if module.name == "__init__.py" or "__pycache__" in module.parts:
            continue
        folder = module.parent.relative_to(ROOT).as_posix()
        row = next((text for path, text in rows.items() if f"`{folder}/`" == path), None)
        listed_alone = any(
            f"`{module.relative_to(ROOT).as_posix()}`" in path or f"`{module.name}`" in path for path in rows
        )
        if not listed_alone and (row is None or f"`{module.stem}`" not in row):
            missing.append(module.relative_to(ROOT).as_posix())
    assert not missing, f"not in the layout table of docs/design.md: {missing}"


def test_the_readme_and_the_docs_point_nowhere_outside_the_repository():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert not re.search(r"\bissue \d+", text, re.I), f"{page.name}: a reader of a clone cannot open an issue"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).resolve().is_relative_to(ROOT) and (page.parent / target).exists(), (
                f"{page.name} links to {target}, which is not in the repository"
            )


# The bottom layers: what both roles and the settings build on. None of them may import a
# role's module (an agent-only import in the settings loaded the agent into the server).
BOTTOM = ["tunnel/config.py", "tunnel/bypass.py", "tunnel/opener.py", "tunnel/wire"]
ROLES = ("tunnel.agent", "tunnel.server", "tunnel.ops", "tunnel.taps")


def imported_names(source: str) -> list[str]:
    """Every module `source` imports, at the top or inside a function (`from a import b`: `a.b`
    as well as `a`, so that `from lambdas import wake` names the handler)."""
    import ast

    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names += [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_no_bottom_layer_module_imports_a_role():
    offenders = []
    for place in BOTTOM:
        path = ROOT / place
        for module in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            offenders += [
                f"{module.relative_to(ROOT)} imports {name}"
                for name in imported_names(module.read_text())
                if name.startswith(ROLES)
            ]
    assert not offenders, offenders


# The tunnel and the operator CLI share with the Lambdas and the Pulumi program through
# `deployment/`, never by reaching into the deployed Lambda code or the stack's resources.
# One exception, by design: `fluidity control-plane` serves the very handlers the Lambdas run.
DEPLOYED = ("lambdas", "infra")
RUNS_THE_HANDLERS = {"tunnel/ops/control_plane.py": {"lambdas", "lambdas.kill", "lambdas.status", "lambdas.wake"}}


def test_the_tunnel_and_the_operator_cli_import_nothing_from_lambdas_or_infra():
    offenders = []
    for module in sorted([*(ROOT / "tunnel").rglob("*.py"), *(ROOT / "twisted" / "plugins").glob("*.py")]):
        allowed = RUNS_THE_HANDLERS.get(module.relative_to(ROOT).as_posix(), set())
        offenders += [
            f"{module.relative_to(ROOT)} imports {name}"
            for name in imported_names(module.read_text())
            if name.split(".")[0] in DEPLOYED and name not in allowed
        ]
    assert not offenders, f"move what both need to deployment/: {offenders}"


def test_the_import_rule_sees_imports_inside_functions():
    code = "def f():\n    from infra.policies import ECR_KEEP_IMAGES\n    import lambdas.sleep\n"
    assert {"infra.policies", "lambdas.sleep"} <= set(imported_names(code))


# Cyclomatic complexity as radon counts it (ruff's C901 counts a little differently, and
# misses methods nested in classes the same way): past 15, a function does more than one job.
MOST_BRANCHES = 15
MEASURED = ["tunnel", "deployment", "infra", "lambdas"]


def radon_blocks(code: str):
    """Every function, method and closure radon measures in `code` (its blocks hold the
    functions and the classes' methods; closures hang off their function)."""
    from radon.complexity import cc_visit
    from radon.visitors import Class

    pending = [block for block in cc_visit(code) if not isinstance(block, Class)]
    while pending:
        block = pending.pop()
        pending += block.closures
        yield block


def test_no_function_is_above_cyclomatic_15():
    over = []
    for folder in MEASURED:
        for module in sorted((ROOT / folder).rglob("*.py")):
            for block in radon_blocks(module.read_text()):
                if block.complexity > MOST_BRANCHES:
                    over.append(f"{module.relative_to(ROOT)}:{block.lineno} {block.fullname} {block.complexity}")
    assert not over, f"split these into functions with one job each: {over}"


def test_the_complexity_count_sees_methods_and_closures():
    code = "class A:\n    def m(self, x):\n        def inner(y):\n" + "".join(
        f"            if y == {i}:\n                return {i}\n" for i in range(MOST_BRANCHES)
    )
    counted = {block.fullname: block.complexity for block in radon_blocks(code)}
    assert counted["A.m"] == 1 and counted["inner"] == MOST_BRANCHES + 1, counted
