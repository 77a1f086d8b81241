"""The shape issue 15 asks of the code: no function body over ~60 lines and no module over ~400 lines in `pareto/`
(the UI included: pareto/ui), except where the code says why (a `# long:` comment on or just above the `def`; a
module docstring line starting with "Kept whole")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 65  # "~60": a signature or a return spread over a few lines does not count against a body
MAX_MODULE_LINES = 420


def sources() -> list[Path]:
    return sorted(p for base in ("pareto",) for p in (ROOT / base).rglob("*.py"))


def test_functions_are_short_or_say_why() -> None:
    long = []
    for path in sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                said = any("# long:" in lines[i - 1] for i in range(max(first - 2, 1), node.lineno + 1))
                if size > MAX_FUNCTION_LINES and not said:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "split these, or say why with a `# long:` comment: " + "; ".join(long)


def test_modules_are_small_or_say_why() -> None:
    big = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        size = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if size > MAX_MODULE_LINES and not any(line.startswith("Kept whole") for line in doc.splitlines()):
            big.append(f"{path.relative_to(ROOT)} ({size} lines)")
    assert not big, "split these along their jobs, or say why in a docstring line 'Kept whole ...': " + "; ".join(big)
