"""House rules (CONTRIBUTING.md, "Rooms with one job"): long modules say why; public names stay."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fellrec

#: Modules up to this many lines need no reason (about 350, with room for a docstring's growth).
LONG_MODULE_LINES = 375
#: How a long module's docstring starts the paragraph that says why it is one module.
REASON = "Longer than most modules:"
SOURCE = Path(fellrec.__file__).parent


def long_modules_without_a_reason(root: Path, limit: int) -> list[str]:
    """The modules under ``root`` longer than ``limit`` lines whose docstring gives no reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") + 1 <= limit:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if REASON not in docstring:
            found.append(f"{path.relative_to(root.parent)} ({text.count(chr(10)) + 1} lines)")
    return found


def test_every_long_module_says_why_it_is_one_module() -> None:
    assert long_modules_without_a_reason(SOURCE, LONG_MODULE_LINES) == []


def test_the_rule_finds_a_long_module_without_a_reason(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"x{i} = {i}" for i in range(20))
    (package / "long.py").write_text(f'"""A module."""\n{body}\n')
    (package / "explained.py").write_text(f'"""A module.\n\n{REASON} one job.\n"""\n{body}\n')
    (package / "short.py").write_text('"""A module."""\nx = 1\n')
    assert long_modules_without_a_reason(package, 10) == ["pkg/long.py (22 lines)"]


def test_the_public_classes_import_from_the_training_package() -> None:
    import fellrec.training as training
    from fellrec.training.host.federated_module import FederatedModule
    from fellrec.training.rounds.loop import FederatedLoop

    assert training.FederatedModule is FederatedModule
    assert training.FederatedLoop is FederatedLoop
    assert {"ClientModule", "FederatedDataModule"} <= set(training.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        training.Nothing  # noqa: B018
