"""models/ has no import loop: config translation and weights io import no model (so `LanguageModel` imports
them at module level), checked on the module-level import statements of the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mambalab

ROOT = Path(mambalab.__file__).parent


def _module_path(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for path in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _top_level_imports(name: str) -> set[str]:
    """The mambalab modules `name` imports at module level (what an import loop is made of)."""
    path = _module_path(name)
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mambalab"):
            for alias in node.names:  # `from mambalab.models import hf_config` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _module_path(sub) is not None else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mambalab")}
    return {m for m in found if _module_path(m) is not None and m != "mambalab"}


def _closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in _top_level_imports(todo.pop()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


@pytest.mark.parametrize("module", ["mambalab.models.hf_config", "mambalab.models.weights_io",
                                    "mambalab.errors", "mambalab.config", "mambalab.tokenizer"])
def test_module_imports_no_model(module):
    models = sorted(m for m in _closure(module) if m.startswith(("mambalab.models", "mambalab.layers")))
    assert models == [] or set(models) <= {"mambalab.models.hf_config", "mambalab.models.weights_io"}, models


def test_models_have_no_import_loop():
    for path in sorted((ROOT / "models").glob("*.py")):
        name = f"mambalab.models.{path.stem}" if path.stem != "__init__" else "mambalab.models"
        assert name not in _closure(name), f"{name} imports itself through {sorted(_closure(name))}"


def test_language_model_calls_down_into_the_model_free_modules():
    deps = _top_level_imports("mambalab.models.lm")
    assert {"mambalab.models.hf_config", "mambalab.models.weights_io"} <= deps
    assert "mambalab.models.pretrained" not in deps
