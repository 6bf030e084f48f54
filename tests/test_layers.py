"""The layering of the two packages: gru4rec never imports Ray or Optuna, search uses gru4rec's public API only."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module or "", [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "gru4rec").rglob("*.py")), ids=lambda p: p.name)
def test_the_model_library_does_not_import_the_search_stack(path):
    for module, _ in imports(path):
        assert module.split(".")[0] not in ("ray", "optuna", "search"), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", sorted((ROOT / "search").rglob("*.py")), ids=lambda p: p.name)
def test_the_platform_uses_only_public_names_of_gru4rec(path):
    for module, names in imports(path):
        if module.split(".")[0] != "gru4rec":
            continue
        assert module != "gru4rec.cli", f"{path.name} borrows from the gru4rec command's internals"
        assert not any(part.startswith("_") for part in module.split(".")), f"{path.name} imports {module}"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{path.name} imports private {private} from {module}"
