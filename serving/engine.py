"""The vLLM engine wrapper: one `AsyncLLM` in this process, started LoRA-ready.

The engine core runs in a child process that vLLM spawns; callers must run under an
`if __name__ == "__main__":` guard (the `rlhf` console script does).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator

from transformers import AutoTokenizer
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from adapters.router import LoadedAdapter
from rlhf.models.card import model_card
from rlhf.models.sizing import context_length, vllm_scheduling
from rlhf.settings import Settings

log = logging.getLogger(__name__)


class EngineStopped(RuntimeError):
    """The vLLM engine core is gone (killed, out of memory, crashed): this replica cannot answer."""


class PromptTooLong(ValueError):
    """The rendered prompt (plus the requested answer) does not fit the context."""


class Engine:
    def __init__(self, settings: Settings, model_path: Path, served_name: str):
        self.settings = settings
        self.model_path = model_path
        self.served_name = served_name
        self.max_model_len = settings.max_model_len
        self.llm = None  # vllm AsyncLLM, once started
        self.tokenizer = None
        self.default_stop: list[str] = []  # the model card's stop strings (base models' Q/A transcript)
        self.max_token_bytes = 1  # set with the tokenizer
        # Rendering and tokenizing a long prompt takes seconds: never on the event loop. One thread, because
        # a fast tokenizer called from two threads at once can fail ("Already borrowed").
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    async def start(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        # The most text one token stands for: its vocabulary string in UTF-8 bytes (at least its characters).
        self.max_token_bytes = max((len(t.encode()) for t in self.tokenizer.get_vocab()), default=1)
        self.default_stop = model_card(self.model_path).get("stop", [])
        args = AsyncEngineArgs(
            model=str(self.model_path),
            served_model_name=[self.served_name],
            max_model_len=(context := context_length(self.model_path, self.settings.max_model_len)),
            **vllm_scheduling(context, 2048),  # 2048: vLLM's own budget for serving on CPU
            gpu_memory_utilization=self.settings.gpu_memory_utilization,
            kv_cache_memory_bytes=int(self.settings.kv_cache_gb * 2**30) if self.settings.kv_cache_gb > 0 else None,
            max_num_seqs=self.settings.max_num_seqs,
            enable_lora=True,
            max_lora_rank=self.settings.max_lora_rank,
            max_loras=self.settings.max_loras,
            enforce_eager=True,
            disable_log_stats=True,
        )
        log.info("starting vLLM engine for %s (%s)", self.served_name, self.model_path)
        self.llm = AsyncLLM.from_engine_args(args)
        self.max_model_len = self.llm.vllm_config.model_config.max_model_len
        log.info("engine ready; max_model_len=%d", self.max_model_len)

    @property
    def ready(self) -> bool:
        return self.llm is not None and not self.llm.errored

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    def render(self, messages: list[dict]) -> list[int]:
        """Chat template -> token ids, with exactly one <bos> in front when the model has one.

        A prompt longer than the context comes back cut to one token more than the context (still
        too long, as `fit_max_tokens` says): turning millions of token ids into a Python list would
        hold the interpreter lock, and so the event loop, for seconds."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # A text this long has more tokens than the context whatever it says: refused without tokenizing it.
        # (x4: slack for a normalizer that merges characters before tokenizing.)
        if len(text) > 4 * self.max_token_bytes * (self.max_model_len + 1):
            raise PromptTooLong(f"the prompt is {len(text)} characters, more than {self.max_model_len} tokens; this "
                                f"model's context is {self.max_model_len} tokens")
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True,
                             max_length=self.max_model_len + 1)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    async def render_off_loop(self, messages: list[dict]) -> list[int]:
        """`render` on the tokenizer thread: the event loop (and /healthz) keeps answering meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, self.render, messages)

    def fit_max_tokens(self, prompt_len: int, wanted: int | None) -> int:
        room = self.max_model_len - prompt_len
        if room <= 0:
            size = f"more than {self.max_model_len}" if prompt_len > self.max_model_len else str(prompt_len)
            raise PromptTooLong(f"the prompt is {size} tokens; this model's context is {self.max_model_len} tokens")
        if wanted is None:
            return min(self.settings.max_tokens_default, room)
        if wanted > room:
            raise PromptTooLong(
                f"max_tokens={wanted} plus the prompt's {prompt_len} tokens exceeds this model's "
                f"context of {self.max_model_len} tokens (at most {room} tokens are left for the answer)")
        return wanted

    @property
    def dead(self) -> bool:
        """Started once, and its engine core has since died."""
        return self.llm is not None and self.llm.errored

    async def generate(self, prompt_ids: list[int], params, request_id: str,
                       adapter: LoadedAdapter | None = None) -> AsyncIterator:
        """Stream vLLM outputs for one prompt, on the base model or on `adapter`."""
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id,
                                               lora_request=_lora_request(adapter)):
                yield out
        except EngineDeadError as e:
            raise EngineStopped("the inference engine of this replica stopped; it is restarting, retry shortly") from e

    async def add_lora(self, adapter: LoadedAdapter) -> bool:
        """Load an adapter version under its own name and LoRA id; False (or an exception) if vLLM refuses."""
        return await self.llm.add_lora(_lora_request(adapter))

    async def remove_lora(self, lora_id: int) -> None:
        await self.llm.remove_lora(lora_id)

    def queue_depth(self) -> int:
        return self.llm.get_num_unfinished_requests() if self.llm is not None else 0


def _lora_request(adapter: LoadedAdapter | None) -> LoRARequest | None:
    return LoRARequest(adapter.version, adapter.lora_id, str(adapter.path)) if adapter is not None else None
