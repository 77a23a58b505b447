"""mambalab: selective state space models (Mamba), readable and fast."""

from mambalab.config import AttentionConfig, MLPConfig, ModelConfig, MoEConfig, S4DConfig, SSMConfig
from mambalab.inference.generate import GenerationResult, generate
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.state import InferenceState
from mambalab.models.lm import LanguageModel
from mambalab.models.pretrained import load
from mambalab.ops.selective_scan import selective_scan
from mambalab.ops.ssd import ssd_scan

__version__ = "0.1.0"

__all__ = [
    "AttentionConfig", "GenerationResult", "InferenceState", "LanguageModel", "MLPConfig", "MoEConfig",
    "ModelConfig", "PrefixCache", "S4DConfig", "SSMConfig", "generate", "load", "selective_scan", "ssd_scan",
]
