"""A tiny byte-level model served over real HTTP on 127.0.0.1 (a uvicorn thread), queried with `openai`."""

from __future__ import annotations

import pytest
import torch

from mambalab.serve.engine import Engine
from mambalab.serve.scheduler import Limits
from mambalab.tokenizer import load_tokenizer

TOK = load_tokenizer("byte")
SYSTEM = "You are a tiny test model."
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 4096


def byte_model():
    from mambalab import LanguageModel, ModelConfig, SSMConfig

    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_layer=2, vocab_size=TOK.vocab_size, ssm=SSMConfig(d_state=8))
    return LanguageModel(config).double().eval()


class Served:
    """A running server: its engine, base URL and an `openai` client."""

    def __init__(self, engine: Engine, thread, api_key: str = "unused"):
        import openai

        self.engine, self.thread, self.url = engine, thread, thread.url
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)


def start_server(engine: Engine, **app_kwargs):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    from mambalab.serve.app import create_app
    from mambalab.serve.server import ServerThread

    return ServerThread(create_app(engine, MODEL_NAME, **app_kwargs)).start()


@pytest.fixture(scope="module")
def served():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the server threads outlive each test's conftest _one_thread
    engine = Engine(byte_model(), TOK, limits=Limits(max_model_len=MAX_MODEL_LEN, max_prefill_tokens=64))
    thread = start_server(engine, system_prompt=SYSTEM)
    yield Served(engine, thread)
    thread.stop()
    torch.set_num_threads(previous)
