"""The trainer: learning on the embedded corpus, exact resume (in process and after SIGKILL), NaN guard,
gradient accumulation, export + eval agreement."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mambalab import LanguageModel
from mambalab.errors import InputError
from mambalab.train.evaluate import evaluate_model
from mambalab.train.resume_checkpoints import latest_valid_checkpoint, list_checkpoints
from mambalab.train.run import load_run_config, run_training
from mambalab.train.trainer import TrainConfig, Trainer, TrainingDiverged

QUIET = {"progress": False, "device": "cpu"}


def _random_batches(seed: int, n: int, batch: int = 4, length: int = 32, vocab: int = 259):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(vocab, (batch, length + 1), generator=gen)  # (b, l + 1)
        yield {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


def test_loss_falls_on_embedded_corpus_and_eval_agrees(embedded_ds, tmp_path):
    overrides = ["model.d_model=32", "model.n_layer=2", f"data.path={embedded_ds}", "lr=3e-3", "min_lr=3e-4",
                 "warmup_steps=10", "max_steps=40", "batch_size=8", "seq_len=64", "eval_every=20",
                 "eval_batches=4", "log_every=10", "ckpt_every=0", "progress=false", "device=cpu"]
    result = run_training(load_run_config(preset="tiny-mamba", overrides=overrides), tmp_path)
    losses = [r["loss"] for r in result.records if "loss" in r]
    vals = [r for r in result.records if "val_loss" in r]
    assert losses[0] > 5.0 and losses[-1] < losses[0] - 1.5, losses  # from ln(259) = 5.56 towards ~3
    assert len(vals) == 2 and vals[1]["val_loss"] < min(vals[0]["val_loss"], 4.0)
    assert vals[-1]["val_bpb"] == pytest.approx(vals[-1]["val_loss"] / math.log(2), rel=1e-4)  # ~1 byte/token
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.records
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000040"]  # at exit
    # the exported model scores the same validation windows to the same loss
    scored = evaluate_model(result.model_dir, embedded_ds, batch_size=8, seq_len=64, max_batches=4, device="cpu")
    assert scored["loss"] == pytest.approx(vals[-1]["val_loss"], rel=1e-5)
    assert scored["bits_per_byte"] == pytest.approx(vals[-1]["val_bpb"], rel=1e-5)


def test_resume_in_process_after_sigint_is_exact(tiny_model, tmp_path):
    """A stateless batch iterable: resume skips the consumed batches; the loss curve is bitwise identical."""
    cfg = TrainConfig(lr=2e-3, warmup_steps=2, max_steps=8, log_every=1, ckpt_every=3, eval_every=0, grad_accum=2,
                      **QUIET)
    reference = Trainer(tiny_model(1), cfg, _random_batches(5, 16)).fit()

    def interrupted(n):
        for i, batch in enumerate(_random_batches(5, n)):
            if i == 9:  # during step 5 (two micro-batches per step)
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    first = Trainer(tiny_model(1), cfg, interrupted(16), out_dir=tmp_path)
    partial = first.fit()
    assert first.stop_signal == signal.SIGINT and [r["step"] for r in partial] == [1, 2, 3, 4, 5]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000003", "step_00000005"]
    resumed = Trainer(tiny_model(99), cfg, _random_batches(5, 16), out_dir=tmp_path).fit(resume=True)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in reference]


def test_grad_accumulation_matches_the_full_batch(tiny_model):
    big = list(_random_batches(3, 3, batch=4))
    small = [{k: v[i : i + 2] for k, v in b.items()} for b in big for i in (0, 2)]
    cfg = dict(lr=1e-3, warmup_steps=0, max_steps=3, log_every=1, eval_every=0, **QUIET)
    full = Trainer(tiny_model(2), TrainConfig(batch_size=4, **cfg), big).fit()
    accum = Trainer(tiny_model(2), TrainConfig(batch_size=2, grad_accum=2, **cfg), small).fit()
    for a, b in zip(full, accum):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


class Poisoned(LanguageModel):
    """Returns a NaN loss on the training forward calls listed in `poison` (1-based)."""

    poison: frozenset[int] = frozenset()
    calls = 0

    def forward(self, input_ids, return_aux_loss=False, state=None, labels=None):
        out = super().forward(input_ids, return_aux_loss=return_aux_loss, state=state, labels=labels)
        if not self.training:
            return out
        self.calls += 1
        if self.calls in self.poison:
            (total, count), aux = out
            return (total * math.nan, count), aux
        return out


def test_nan_guard_skips_a_step(tiny_model):
    model = tiny_model(4, Poisoned)
    model.poison = frozenset({3})
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=5, log_every=1, eval_every=0, **QUIET)
    trainer = Trainer(model, cfg, _random_batches(1, 5))
    records = trainer.fit()
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["skipped_steps"] == 1 and math.isnan(records[2]["loss"])
    assert all(math.isfinite(r["loss"]) for r in records[3:])
    assert trainer.optimizer.state[model.lm_head.weight]["step"].item() == 4  # 4 updates in 5 steps


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tiny_model, tmp_path):
    model = tiny_model(4, Poisoned)
    model.poison = frozenset(range(4, 100))
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=20, log_every=1, eval_every=0, ckpt_every=2,
                      nan_patience=3, **QUIET)
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row .*/step_00000002"):
        Trainer(model, cfg, _random_batches(1, 20), out_dir=tmp_path).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    ckpt = latest_valid_checkpoint(tmp_path / "checkpoints")
    assert all(torch.isfinite(t).all() for t in ckpt.model.values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and records[-1]["skipped_steps"] == 1


CLI_SETTINGS = ["model.d_model=32", "model.n_layer=2", "max_steps=24", "batch_size=4", "seq_len=32", "log_every=1",
                "ckpt_every=4", "eval_every=0", "progress=false", "device=cpu", "lr=2e-3", "warmup_steps=4"]


def _train_cli(out, settings, *extra):
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return [sys.executable, "-m", "mambalab", "train", "--preset", "tiny-mamba", "--out", str(out), *sets, *extra]


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_reproduces_the_loss_curve(embedded_ds, tmp_path):
    """Kill -9 after the step-4 checkpoint; resume; SIGTERM after step 12 (clean exit with a checkpoint);
    resume to the end: the loss curve equals an uninterrupted run's, bit for bit."""
    settings = [*CLI_SETTINGS, f"data.path={embedded_ds}"]
    reference = run_training(load_run_config(preset="tiny-mamba", overrides=settings), tmp_path / "ref").records
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cli(out, settings), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(out / "checkpoints" / "step_00000004", proc)
    proc.kill()
    proc.wait()
    proc = subprocess.Popen(_train_cli(out, settings, "--resume"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    _wait_for(out / "checkpoints" / "step_00000012", proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0 and "stopped by signal" in output, output
    stopped_at = int(list_checkpoints(out / "checkpoints")[-1].name.split("_")[1])
    assert 12 <= stopped_at < 24
    done = subprocess.run(_train_cli(out, settings, "--resume"), env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 25))
    assert [r["loss"] for r in records] == [r["loss"] for r in reference]


def test_activation_checkpointing_gives_the_same_steps(tiny_model):
    batches = list(_random_batches(6, 3))
    cfg = {"lr": 1e-3, "warmup_steps": 0, "max_steps": 3, "log_every": 1, "eval_every": 0, **QUIET}
    plain = Trainer(tiny_model(3), TrainConfig(**cfg), batches).fit()
    ckpt = Trainer(tiny_model(3), TrainConfig(activation_checkpointing=True, **cfg), batches).fit()
    for a, b in zip(plain, ckpt):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)


def test_moe_aux_loss_is_trained_and_logged():
    from mambalab.models.zoo import get_preset

    config = get_preset("tiny-moe")
    config.d_model, config.n_layer, config.layer_pattern, config.moe.d_intermediate = 32, 1, ["mamba+moe"], 64
    model = LanguageModel(config)
    router = model.backbone.layers[0].mlp.router.weight
    before = router.detach().clone()
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=2, log_every=1, eval_every=0, **QUIET)
    records = Trainer(model, cfg, _random_batches(2, 2, vocab=256)).fit()
    assert all(r["aux_loss"] > 0 for r in records)
    assert not torch.equal(router.detach(), before)  # the router is trained


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_past_a_corrupt_checkpoint_writes_that_step_again(tiny_model, tmp_path):
    """The corrupt newest checkpoint is moved aside, so reaching its step again writes a valid one."""
    cfg = TrainConfig(max_steps=4, ckpt_every=2, keep_last=2, eval_every=0, warmup_steps=1, **QUIET)
    batches = list(_random_batches(0, 4))
    Trainer(tiny_model(0), cfg, batches, out_dir=tmp_path).fit()
    root = tmp_path / "checkpoints"
    _flip_last_byte(root / "step_00000004" / "model.safetensors")
    Trainer(tiny_model(0), cfg, batches, out_dir=tmp_path).fit(resume=True)
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000004"]
    assert latest_valid_checkpoint(root).step == 4
    assert (root / ".corrupt-step_00000004").is_dir()


def _constant_lr(max_steps, **kw):
    return TrainConfig(lr=1e-3, min_lr=1e-3, warmup_steps=0, max_steps=max_steps, log_every=1, eval_every=0,
                       **kw, **QUIET)


def test_a_data_loader_is_iterated_again_each_epoch_and_resumes_across_epochs(tiny_model, tmp_path):
    ids = torch.randint(259, (12, 33), generator=torch.Generator().manual_seed(3))  # 12 sequences of l + 1
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)  # 3 batches per epoch
    reference = Trainer(tiny_model(1), _constant_lr(7), loader).fit()
    assert [r["step"] for r in reference] == list(range(1, 8))
    Trainer(tiny_model(1), _constant_lr(4, ckpt_every=4), loader, out_dir=tmp_path).fit()
    resumed = Trainer(tiny_model(9), _constant_lr(7), loader, out_dir=tmp_path).fit(resume=True)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]  # step 5 takes epoch 2's second batch


@pytest.mark.parametrize(("batches", "message"), [
    (lambda: _random_batches(0, 3), "iterator ran out after 3 batches, short of max_steps × grad_accum = 4"),
    (list, "list yielded no batch"),
], ids=["exhausted iterator", "empty list"])
def test_batches_that_run_out_are_refused_by_name(tiny_model, batches, message):
    with pytest.raises(InputError, match=message):
        Trainer(tiny_model(0), _constant_lr(4), batches()).fit()
