"""The ```python blocks of README.md run as written, in a scratch directory with tiny stand-ins for what a
block only names (a checkpoint directory, a prefix)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def _tiny_checkpoint(directory: Path) -> dict:
    from mambalab import LanguageModel, ModelConfig, SSMConfig

    LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=64, ssm=SSMConfig(d_state=4))).save_pretrained(directory)
    return {"prefix_ids": torch.tensor([[5, 6, 7]])}


# A name a block uses without defining it -> how the test provides it.
STAND_INS = {"path/to/mamba-130m-hf": lambda: _tiny_checkpoint(Path("path/to/mamba-130m-hf"))}


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(tmp_path, monkeypatch, index):
    monkeypatch.chdir(tmp_path)
    block = BLOCKS[index]
    namespace: dict = {"__name__": "readme"}
    for marker, provide in STAND_INS.items():
        if marker in block:
            namespace.update(provide())
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
