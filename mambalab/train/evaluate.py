"""`mambalab eval`: perplexity and bits per byte of a model on a prepared dataset split or on raw text.

The model is an exported directory (config.json + weights, any format `mambalab.load`
reads), a training run directory (its `model/`), or one training checkpoint (`checkpoints/step_*`). The
model's tokenizer is `--tokenizer`, else the model directory's tokenizer.json, else bytes when the model's
vocabulary is the byte tokenizer's (a checkpoint dir of a model with another vocabulary needs
`--tokenizer`). Raw text inputs are tokenized with it into a temporary dataset; a prepared dataset must
have been prepared with it (same fingerprint). Text is scored in non-overlapping windows of `seq_len`
tokens, each predicted from its own window only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from mambalab.config import ModelConfig
from mambalab.device import resolve_device
from mambalab.errors import InputError
from mambalab.models.lm import LanguageModel
from mambalab.tokenizer import TOKENIZER_FILE, ByteTokenizer, Tokenizer, load_tokenizer
from mambalab.train.data import MANIFEST, SequentialBatches, TokenDataset, prepare_dataset
from mambalab.train.resume_checkpoints import INDEX, check_fits_model, load_checkpoint
from mambalab.train.trainer import evaluate_loss


def load_model_dir(path: str | Path, device: torch.device) -> tuple[LanguageModel, Path]:
    """(model in eval mode, the directory its weights came from) for an export, run dir or checkpoint."""
    path = Path(path)
    if (path / INDEX).is_file():
        ckpt = load_checkpoint(path)
        if ckpt.state.get("model_config") is None:
            raise InputError(f"{path}: this training checkpoint records no model config")
        model = LanguageModel(ModelConfig.from_dict(ckpt.state["model_config"], where=str(path)))
        check_fits_model(ckpt, model)
        model.load_state_dict(ckpt.model)
        return model.to(device).eval(), path
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"
    from mambalab.models.pretrained import load

    return load(path, device=device).eval(), path


def model_tokenizer(source: Path, model: LanguageModel, tokenizer: str | None) -> Tokenizer:
    """The tokenizer the model at `source` reads: `tokenizer` when given, else the directory's tokenizer
    files, else bytes when the model's vocabulary is the byte tokenizer's; InputError when none tells (a
    training checkpoint dir, or a model dir without tokenizer.json, of another vocabulary)."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if (source / TOKENIZER_FILE).is_file() or model.config.vocab_size == ByteTokenizer.vocab_size:
        return load_tokenizer(source)
    raise InputError(
        f"{source}: no {TOKENIZER_FILE}, and the model's vocabulary of {model.config.vocab_size} is not the byte"
        f" tokenizer's {ByteTokenizer.vocab_size}: pass --tokenizer (the tokenizer.json it was trained with)"
    )


def evaluate_model(
    model_dir: str | Path,
    data: str | Path,
    split: str = "val",
    batch_size: int = 8,
    seq_len: int = 512,
    max_batches: int | None = None,
    tokenizer: str | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> dict:
    """{"loss", "perplexity", "bits_per_byte", "tokens", "data", "model"} of `model_dir` on `data`."""
    dev = resolve_device(device)
    model, source = load_model_dir(model_dir, dev)
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    with tempfile.TemporaryDirectory(prefix="mambalab-eval-") as tmp:
        data_path = Path(data)
        tok = model_tokenizer(source, model, tokenizer)
        if not (data_path / MANIFEST).is_file():
            data_path = Path(tmp) / "data"
            prepare_dataset([data], data_path, tok, val_fraction=0.0)
            split = "train"
        dataset = TokenDataset(data_path, split, tok)  # refuses data prepared with another tokenizer
        vocab = dataset.manifest["tokenizer"]["vocab_size"]
        if vocab > model.config.vocab_size:
            raise InputError(
                f"data {data}: tokenized with a vocabulary of {vocab}, larger than the model's"
                f" {model.config.vocab_size}"
            )
        batches = SequentialBatches(dataset, batch_size, seq_len, max_batches=max_batches)
        result = evaluate_loss(model, batches, dev, torch.bfloat16 if bf16 else None,
                               bytes_per_token=dataset.bytes_per_token)
    return {"loss": result["loss"], "perplexity": result["ppl"], "bits_per_byte": result["bpb"],
            "tokens": result["tokens"], "data": str(data), "split": split, "model": str(source)}
