"""Chat completions: request -> vLLM -> OpenAI-shaped answer, plus what feedback needs.

Every completion gets a fresh id; each choice gets its own response id and a feedback token
bound to the end user (`Caller.end_user`: the request's `user` within its client, or the JWT's
`sub`). One `Interaction` event per choice (none for `store: false`), carrying that user and the client, goes to
`rlhf.interactions` before the answer (or the stream's last chunk) reaches the client, so
feedback can never arrive for an answer the event log does not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from adapters.router import LoadedAdapter, Router
from feedback import feedback_tokens
from feedback.producer import SpoolFull
from feedback.schema import TOPIC_INTERACTIONS, Interaction, Message
from rlhf.models.card import model_card, preamble_messages, sampling_defaults, with_preamble
from serving import metrics
from serving.auth import Caller
from serving.engine import Engine, EngineStopped
from serving.protocol import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                              ChunkChoice, Delta, RLHFInfo, RLHFResponse, Usage, error_body)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """One request, checked and routed, before generation."""

    request: ChatCompletionRequest
    messages: list[dict]  # the prompt as rendered: [{"role", "content"}]
    prompt_ids: list[int]
    params: SamplingParams
    adapter: LoadedAdapter | None  # None: the base model
    sampling: dict  # what the Interaction records of the sampling
    user: str  # the end user: feedback tokens are bound to them
    client: str  # the authenticated client ("" without auth)


class ChatService:
    def __init__(self, engine: Engine, router: Router, settings, events=None):
        self.engine = engine
        self.router = router
        self.settings = settings
        self.events = events  # feedback.producer.EventPublisher, when wired
        self.replica = settings.replica_id or f"{settings.host}:{settings.port}"
        card = model_card(engine.model_path)
        # The preamble steers the bare base model; adapters learn (and are served) without it.
        self.preamble = preamble_messages(card, settings.preamble)
        self.stop = card.get("stop", [])  # applied beside a request's own stop strings
        self.sampling_defaults = sampling_defaults(card)

    # ------------------------------------------------------------------ preparation
    async def prepare(self, req: ChatCompletionRequest, caller: Caller) -> Prepared:
        """Render, size and route one request; bad input raises here, before any byte is sent."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        user = caller.end_user(req.user)
        adapter = self.router.pick(user, req.model)
        prompt_ids = await self.engine.render_off_loop(messages if adapter else with_preamble(messages, self.preamble))
        max_tokens = self.engine.fit_max_tokens(len(prompt_ids), req.wanted_tokens())
        temperature = self.sampling_defaults["temperature"] if req.temperature is None else req.temperature
        top_p = self.sampling_defaults["top_p"] if req.top_p is None else req.top_p
        params = SamplingParams(
            n=req.n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
            stop=(req.stop or []) + self.stop or None,
            seed=req.seed, ignore_eos=req.ignore_eos, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            structured_outputs=StructuredOutputsParams(choice=req.structured_outputs.choice)
            if req.structured_outputs else None,
            output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY,
        )
        sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n": req.n,
                    "stop": req.stop, "seed": req.seed}
        return Prepared(req, messages, prompt_ids, params, adapter, sampling, user, caller.client)

    def _model_name(self, adapter: LoadedAdapter | None) -> str:
        return adapter.version if adapter else self.engine.served_name

    def _rlhf_info(self, completion_hex: str, n: int, user: str, adapter: LoadedAdapter | None,
                   messages: list[dict], recorded: bool) -> RLHFInfo:
        """Response ids and feedback tokens; none when the interactions could not be recorded
        (feedback on an answer the event log does not hold could never be joined)."""
        version = adapter.version if adapter else None
        digest = feedback_tokens.prompt_digest(messages)  # lets answers of two requests to one prompt be compared
        refs = []
        for i in range(n if recorded else 0):
            rid = feedback_tokens.response_id(completion_hex, i)
            tok = feedback_tokens.sign(self.settings.hmac_key, rid, user, adapter=version, prompt=digest)
            refs.append(RLHFResponse(index=i, response_id=rid, feedback_token=tok))
        return RLHFInfo(adapter=version, responses=refs)

    async def _record(self, completion_hex: str, prep: Prepared, texts: list[str], finish: list[str | None],
                      completion_tokens: list[int]) -> bool:
        """Count the answer and publish one Interaction per choice; False if they could not be made durable."""
        adapter, prompt_tokens = prep.adapter, len(prep.prompt_ids)
        label = adapter.version if adapter else "base"
        metrics.PROMPT_TOKENS.labels(label).inc(prompt_tokens)
        for i, text in enumerate(texts):
            metrics.GENERATED_TOKENS.labels(label).inc(completion_tokens[i])
            metrics.COMPLETIONS.labels(label, finish[i] or "unknown").inc()
        if self.events is None or not prep.request.store:  # store=false: not logged, never trained on
            return False
        events = [
            Interaction(
                response_id=feedback_tokens.response_id(completion_hex, i), completion_id=f"chatcmpl-{completion_hex}",
                choice_index=i, conversation_id=completion_hex, user=prep.user, client=prep.client,
                messages=[Message(**m) for m in prep.messages], response=text, finish_reason=finish[i],
                model=self.engine.served_name, adapter=adapter.version if adapter else None, sampling=prep.sampling,
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens[i], replica=self.replica,
            )
            for i, text in enumerate(texts)
        ]
        try:
            await asyncio.gather(*(self.events.publish(TOPIC_INTERACTIONS, ev) for ev in events))
        except SpoolFull:
            # Broker down long enough to fill the spool: still answer, but without feedback tokens.
            log.warning("spool full: completion %s served without feedback tokens", completion_hex)
            metrics.UNRECORDED.inc(len(events))
            return False
        return True

    # ------------------------------------------------------------------ non-streaming
    async def complete(self, prep: Prepared) -> ChatCompletion:
        req, prompt_ids, adapter = prep.request, prep.prompt_ids, prep.adapter
        completion_hex = uuid.uuid4().hex
        label = adapter.version if adapter else "base"
        start = time.perf_counter()
        final = None
        metrics.INFLIGHT.inc()
        try:
            async for out in self.engine.generate(prompt_ids, prep.params, f"chatcmpl-{completion_hex}", adapter):
                final = out
        except Exception:  # a client that goes away cancels (BaseException): not an error of the version
            metrics.COMPLETION_ERRORS.labels(label).inc(req.n)
            raise
        finally:
            metrics.INFLIGHT.dec()
        metrics.TTFT.labels(label).observe(time.perf_counter() - start)  # no stream: first token = whole answer
        outs = sorted(final.outputs, key=lambda o: o.index)
        texts = [o.text for o in outs]
        finish = [o.finish_reason for o in outs]
        ctoks = [len(o.token_ids) for o in outs]
        recorded = await self._record(completion_hex, prep, texts, finish, ctoks)
        return ChatCompletion(
            id=f"chatcmpl-{completion_hex}", model=self._model_name(adapter),
            choices=[Choice(index=o.index, message=AssistantMessage(content=o.text), finish_reason=o.finish_reason)
                     for o in outs],
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=sum(ctoks),
                        total_tokens=len(prompt_ids) + sum(ctoks)),
            rlhf=self._rlhf_info(completion_hex, req.n, prep.user, adapter, prep.messages, recorded),
        )

    # ------------------------------------------------------------------ streaming (SSE)
    async def stream(self, prep: Prepared) -> AsyncIterator[str]:
        req, prompt_ids, adapter = prep.request, prep.prompt_ids, prep.adapter
        completion_hex = uuid.uuid4().hex
        cid = f"chatcmpl-{completion_hex}"
        created = int(time.time())
        model = self._model_name(adapter)
        label = adapter.version if adapter else "base"
        texts = [""] * req.n
        finish: list[str | None] = [None] * req.n
        ctoks = [0] * req.n
        started = [False] * req.n
        start = time.perf_counter()
        first = True

        def sse(chunk: ChatCompletionChunk) -> str:
            return f"data: {chunk.model_dump_json(exclude_none=False)}\n\n"

        metrics.INFLIGHT.inc()
        try:
            async for out in self.engine.generate(prompt_ids, prep.params, cid, adapter):
                for o in out.outputs:
                    i = o.index
                    if first and o.token_ids:
                        metrics.TTFT.labels(label).observe(time.perf_counter() - start)
                        first = False
                    delta = Delta(content=o.text)
                    if not started[i]:
                        delta.role = "assistant"
                        started[i] = True
                    texts[i] += o.text
                    ctoks[i] += len(o.token_ids)
                    if o.finish_reason is not None:
                        finish[i] = o.finish_reason
                    if o.text or delta.role:
                        yield sse(ChatCompletionChunk(id=cid, created=created, model=model,
                                                      choices=[ChunkChoice(index=i, delta=delta)]))
        except EngineStopped as e:  # the status line is sent: end the stream with an error event, no [DONE]
            metrics.COMPLETION_ERRORS.labels(label).inc(req.n)
            yield f"data: {json.dumps(error_body(str(e), type_='server_error', code='engine_stopped'))}\n\n"
            return
        except Exception:
            metrics.COMPLETION_ERRORS.labels(label).inc(req.n)
            raise
        finally:
            metrics.INFLIGHT.dec()
        recorded = await self._record(completion_hex, prep, texts, finish, ctoks)
        # Finish reasons per choice, then one last chunk with usage (if asked) and the rlhf extension.
        for i in range(req.n):
            yield sse(ChatCompletionChunk(id=cid, created=created, model=model,
                                          choices=[ChunkChoice(index=i, delta=Delta(), finish_reason=finish[i])]))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=sum(ctoks),
                      total_tokens=len(prompt_ids) + sum(ctoks)) if include_usage else None
        last = ChatCompletionChunk(id=cid, created=created, model=model, choices=[], usage=usage,
                                   rlhf=self._rlhf_info(completion_hex, req.n, prep.user, adapter, prep.messages,
                                                        recorded))
        yield sse(last)
        yield "data: [DONE]\n\n"

