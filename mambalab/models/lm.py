"""`LanguageModel`: embeddings → residual blocks → norm_f → lm_head, in parallel or recurrent mode.

Parameter names follow HF transformers' Mamba (`backbone.embeddings`, `backbone.layers.{i}.norm`,
`backbone.layers.{i}.mixer.*`, `backbone.norm_f`, `lm_head`), so checkpoints map one to one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

from mambalab.atomic import write_atomic
from mambalab.config import ModelConfig
from mambalab.errors import CheckpointError, InputError
from mambalab.inference.state import InferenceState
from mambalab.inference.state_dtype import check_state_holds, resolve_state_dtype
from mambalab.layers.block import Block
from mambalab.layers.norm import RMSNorm
from mambalab.models import hf_config, memory, weights_io
from mambalab.ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy

logger = logging.getLogger(__name__)


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        memory.check_model_fits(config, torch.get_default_dtype(), torch.get_default_device())
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 style init as in mamba-ssm: N(0, 0.02) embeddings, zero linear biases, and every residual
        output projection (out_proj, down-projections) rescaled by 1/sqrt(n_layer)."""
        cfg = self.config
        nn.init.normal_(self.backbone.embeddings.weight, std=cfg.initializer_range)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=cfg.initializer_range)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_weight_decay", False):
                nn.init.zeros_(module.bias)
        if cfg.rescale_prenorm_residual:
            for name, p in self.named_parameters():
                if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                    p /= math.sqrt(cfg.n_layer)

    # Convenience ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embeddings.weight.dtype

    def _check_ids(self, input_ids: torch.Tensor, name: str, labels: torch.Tensor | None = None) -> None:
        """Token ids in [0, vocab_size), and `labels` too where they are not -100, else an `InputError` naming the
        tensor and its range. Their minima and maxima are read in one transfer: on a GPU, one host
        synchronisation per call (a training step's forward must not wait for the GPU more than that)."""
        named = {name: input_ids, **({"labels (other than -100)": labels} if labels is not None else {})}
        extremes = []
        for what, ids in named.items():
            if not isinstance(ids, torch.Tensor):
                raise InputError(f"{what} must be an integer torch.Tensor, got {type(ids).__name__}")
            if ids.dtype not in (torch.int64, torch.int32):
                raise InputError(f"{what} must be an integer tensor, got {ids.dtype}")
            if ids is labels:
                if labels.device != input_ids.device:
                    raise InputError(f"labels must be on the device of {name} ({input_ids.device}), got {labels.device}")
                ids = ids.masked_fill(ids == IGNORE_INDEX, 0)  # not scored: stands for a valid id
            if ids.numel():
                extremes += [(what, ids.min().long(), ids.max().long())]
        if not extremes:
            return
        values = torch.stack([v for _, low, high in extremes for v in (low, high)]).tolist()
        for (what, _, _), low, high in zip(extremes, values[0::2], values[1::2], strict=True):
            if low < 0 or high >= self.config.vocab_size:
                raise InputError(f"{what} holds token ids outside [0, vocab_size={self.config.vocab_size}):"
                                 f" min {low}, max {high}")

    def _logits(self, hidden: torch.Tensor, pending: torch.Tensor | None = None) -> torch.Tensor:
        """The head on hidden + pending (a last block's output still to be added; None: nothing to add)."""
        hidden = self.backbone.norm_f.add_then_norm(hidden, pending)[1].to(self.lm_head.weight.dtype)
        return self.lm_head(hidden)[..., : self.config.vocab_size]

    # Parallel mode ----------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, return_aux_loss: bool = False, state: InferenceState | None = None,
                labels: torch.Tensor | None = None):
        """input_ids (b, l) -> logits (b, l, vocab_size) [, aux_loss]. With `state`, continue from it and
        advance it in place (that is prefill).

        With `labels` (b, l) (token ids, or -100 where not scored), the logits are replaced by the pair (sum of
        the next-token cross-entropy over the labelled positions in float32, their count), computed by the
        chunked fused head (`ops/linear_cross_entropy.py`): the (b, l, vocab) logits are never stored."""
        self._check_ids(input_ids, "input_ids", labels)
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if labels is not None and labels.shape != input_ids.shape:
            raise InputError(f"labels must be (batch, length) = {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        x = self.backbone.embeddings(input_ids)  # (b, l, d_model)
        aux_total = x.new_zeros((), dtype=torch.float32)
        for i, layer in enumerate(self.backbone.layers):
            layer_state = None if state is None else state.layers[i]
            x, aux = layer(x, state=layer_state, seqlen=None if state is None else state.seqlen)
            if aux is not None:
                aux_total = aux_total + aux
        if state is not None:
            state.seqlen += input_ids.shape[1]
        if labels is not None:
            out = self._loss(x, labels)  # ((), ())
        else:
            out = self._logits(x)  # (b, l, vocab_size)
        return (out, aux_total) if return_aux_loss else out

    def _loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the cross-entropy over the labelled positions, their count) of labels checked by forward."""
        hidden = self.backbone.norm_f(hidden).to(self.lm_head.weight.dtype)  # (b, l, d_model)
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, labels.reshape(-1),
                                    self.config.vocab_size, IGNORE_INDEX, check_label_values=False)

    def allocate_state(self, batch_size: int, device=None, dtype=None, state_dtype=None) -> InferenceState:
        """A zero state for `batch_size` rows: conv windows and KV caches in `dtype` (default: the model's), SSM
        states in `state_dtype`: None = float32 (float64 for a float64 model), "model" = the model's dtype, or
        "float32" / "bfloat16" / "float16" / a torch dtype (mambalab/inference/state_dtype.py)."""
        device = device or self.device
        ssm_dtype = resolve_state_dtype(state_dtype, dtype or self.dtype)
        layers = [layer.mixer.allocate_state(batch_size, device, dtype, ssm_dtype) for layer in self.backbone.layers]
        return InferenceState(layers, torch.zeros(batch_size, dtype=torch.long, device=device))

    def prefill(self, input_ids: torch.Tensor, state: InferenceState | None = None, state_dtype=None):
        """Run the prompt in parallel mode: (logits (b, l, vocab), state after the last token).
        A given `state` (e.g. a cached prefix) is continued, and not modified: the result is a new state.
        An empty prompt (length 0) is refused: it has no logits to start generating from; a fresh state is
        `allocate_state(batch)`. `state_dtype` is the SSM state dtype of the new state (see `allocate_state`);
        a given `state` keeps its own, and must hold that one when `state_dtype` is given too."""
        self._check_ids(input_ids, "input_ids")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(f"input_ids must be (batch, length >= 1): prefill of no token has no logits to"
                             f" continue from (a fresh state is allocate_state(batch)); got shape"
                             f" {tuple(input_ids.shape)}")
        if state is None:
            state = self.allocate_state(input_ids.shape[0], state_dtype=state_dtype)
        else:
            check_state_holds(state, state_dtype, self.dtype)
            state = state.clone()
        if state.batch_size != input_ids.shape[0]:
            raise InputError(f"state has batch {state.batch_size} but input_ids has batch {input_ids.shape[0]}")
        return self.forward(input_ids, state=state), state

    def step(self, token_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """One token per row in recurrent mode: token_ids (b,) -> logits (b, vocab_size); advances `state`."""
        self._check_ids(token_ids, "token_ids")
        if token_ids.dim() != 1 or token_ids.shape[0] != state.batch_size:
            raise InputError(f"token_ids must be (batch={state.batch_size},), got shape {tuple(token_ids.shape)}")
        return self._step(token_ids, state)

    def _step(self, token_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """`step` without validation: no host synchronisation, so it can be captured in a CUDA graph."""
        x, pending = self.backbone.embeddings(token_ids), None  # (b, d_model)
        for i, layer in enumerate(self.backbone.layers):  # each residual add is done by the next norm
            x, pending = layer.step_deferred(x, pending, state.layers[i], state.seqlen)
        state.seqlen += 1
        return self._logits(x, pending)  # (b, vocab_size)

    def generate(self, prompts, max_new_tokens: int, **kwargs):
        """Generate continuations of `prompts`; see `mambalab.inference.generate.generate` for the options."""
        from mambalab.inference.generate import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    # Pretrained directories (config translation in models/hf_config.py, weights in models/weights_io.py) ---
    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed), each through a temp
        file and `os.replace`; returns the directory. Loadable by `mambalab.load` and, for a pure Mamba, by
        transformers' `MambaForCausalLM.from_pretrained`. With `tokenizer` (a mambalab tokenizer), its files
        for `transformers.AutoTokenizer` are written too and config.json carries its special-token ids."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fields = hf_config.pretrained_config_json(self.config, str(self.dtype).removeprefix("torch."), tokenizer)
        if tokenizer is not None:
            tokenizer.save_hf_files(directory)
        shadowing = [name for name in weights_io.WEIGHT_NAMES[1:] if (directory / name).exists()]
        if shadowing:
            logger.warning(
                "%s also holds %s; model.safetensors takes precedence when loading", directory, shadowing
            )
        weights_io.write_weights(self.state_dict(), directory, tied=self.config.tie_embeddings)
        write_atomic(
            directory / hf_config.CONFIG_NAME, lambda p: p.write_text(json.dumps(fields, indent=2) + "\n")
        )
        logger.info("saved checkpoint to %s", directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        strict_config: bool = True,
    ) -> LanguageModel:
        """Load a mambalab, transformers or official state-spaces Mamba checkpoint directory.

        The model comes back in eval mode (as transformers' `from_pretrained` does); call `.train()` to train.
        device: where the model lives (default CPU). dtype: the model's dtype (default: that of the stored
        embedding); A_log, D and the Δ bias stay float32 whatever it is. Raises `CheckpointError` (a
        `MambalabError`) naming the file and the key on any problem; the model is built only once everything
        checks. Loading does not disturb the global random number generator. strict_config=False logs and
        ignores config.json fields mambalab does not know (fields that would change the math stay refused).
        """
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InputError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        directory = hf_config.checkpoint_dir(directory)
        config, fmt = hf_config.load_config(directory, strict=strict_config)
        where = str(directory / hf_config.CONFIG_NAME)
        memory.check_model_fits(config, torch.get_default_dtype(), "cpu", where, CheckpointError)
        if dtype is not None or device is not None:
            memory.check_model_fits(config, dtype or torch.get_default_dtype(), device or "cpu", where,
                                    CheckpointError)
        state, sources, weights = weights_io.read_weights(directory)
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG
            model = cls(config)
        expected = {key: t.shape for key, t in model.state_dict().items()}
        weights_io.check_state(state, sources, weights, expected, tied=config.tie_embeddings)
        model.to(device=device or "cpu", dtype=dtype or state[weights_io.EMBEDDING_KEY].dtype)
        model.load_state_dict(state, strict=True)
        logger.info("loaded %s checkpoint %s (%s)", fmt, directory, weights.name)
        return model.eval()
