"""The edit-test loop (``pytest -m "not slow"``) stays fast: every test that starts a process is marked ``slow``."""

from __future__ import annotations

import ast
from pathlib import Path

STARTS_A_PROCESS = ("subprocess.", "mp.spawn(", "multiprocessing.")


def _starts_a_process(fn: ast.FunctionDef, functions: dict[str, ast.FunctionDef], seen: frozenset[str]) -> bool:
    """Whether ``fn``, or a module-level function it calls (followed transitively), starts a process."""
    if any(s in ast.unparse(fn) for s in STARTS_A_PROCESS):
        return True
    called = {c.func.id for c in ast.walk(fn) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    return any(_starts_a_process(functions[n], functions, seen | {n}) for n in called & functions.keys() - seen)


def unmarked_process_tests(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    module_slow = "pytest.mark.slow" in "".join(
        ast.unparse(n) for n in tree.body if isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n.targets[0])
    )
    return [
        f"{path.name}::{name}"
        for name, fn in functions.items()
        if name.startswith("test")
        and not module_slow
        and not any("slow" in ast.unparse(d) for d in fn.decorator_list)
        and _starts_a_process(fn, functions, frozenset({name}))
    ]


def test_every_test_that_starts_a_process_is_marked_slow():
    found = [t for p in sorted(Path(__file__).parent.glob("test_*.py")) for t in unmarked_process_tests(p)]
    assert not found, f"mark these @pytest.mark.slow (they start processes): {found}"


def test_the_check_finds_an_unmarked_subprocess_test(tmp_path):
    path = tmp_path / "test_x.py"
    run = "sub" + "process.run(['true'])"  # split, so that this file does not match the check itself
    path.write_text(
        f"import pytest\n\ndef helper():\n    {run}\n\ndef test_a():\n    helper()\n\n"
        "@pytest.mark.slow\ndef test_b():\n    helper()\n\ndef test_c():\n    pass\n"
    )
    assert unmarked_process_tests(path) == ["test_x.py::test_a"]
