"""No function of snnet/ is over 80 lines, argparse option tables aside (functions whose statements
are only ``parser.add_argument(...)`` calls, groups and the parser they return)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snnet"
MAX_LINES = 80


def _is_option_table_statement(node: ast.stmt) -> bool:
    """``x.add_argument(...)``, ``g = x.add_argument_group(...)``, ``p = argparse.ArgumentParser(...)``,
    a call of another table function (``add_model_args(parser)``), a docstring or ``return parser``."""
    if isinstance(node, ast.Return) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        return True
    value = node.value if isinstance(node, (ast.Expr, ast.Assign)) else None
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    parser_class = name.endswith("ArgumentParser")  # argparse's, or snnet.errors.OneLineArgumentParser
    return parser_class or name in ("add_argument", "add_argument_group", "set_defaults") or name.startswith("add_")


def long_functions(root: Path = PACKAGE) -> list[str]:
    """``path:line name (n lines)`` of every function over MAX_LINES lines that is not an option table."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - start + 1
            if lines > MAX_LINES and not all(_is_option_table_statement(s) for s in node.body):
                out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_the_check_finds_a_long_function_and_spares_option_tables(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    table = "\n".join(f"    g.add_argument('--o{i}')" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n\ndef table(g):\n{table}\n    return g\n")
    assert [s.split()[1] for s in long_functions(tmp_path)] == ["long"]


def test_no_function_is_over_80_lines():
    assert not long_functions(), "\n".join(long_functions())
