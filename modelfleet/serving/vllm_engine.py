"""The GPU implementation of :class:`~modelfleet.serving.interface.ServingEngine`, over vLLM.

vLLM's synchronous ``LLMEngine`` (the V1 engine; written against vLLM 0.33) owns
scheduling, the paged KV cache, prefix caching and batching on the GPU. This adapter
maps requests, sampling parameters and token events onto the protocol, so a replica, the
manager and the router never know which engine runs.

vLLM offers no API to read out or write in the KV blocks of one request, so this engine
migrates by recomputation, the path the protocol keeps for KV-less states:
``export_kv_blocks`` returns empty chunks, ``export_request`` aborts the request in vLLM
and hands over its tokens and sampling state without KV, and ``import_request`` re-adds
it with prompt plus the tokens so far as its prompt. Prefix caching stays on, so
recomputing a prefix the target engine has recently seen costs little. What continues
identically, and what does not, is in ``docs/serving-engine.md`` ("vLLM engine").

vLLM is imported when an engine is built, so this module, and the replica that chooses
between engines, import on machines without vLLM or a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from modelfleet.serving.interface import (
    EngineLoad,
    FinishReason,
    KVChunk,
    RequestState,
    SamplingParams,
    TokenEvent,
    TokenStash,
)
from modelfleet.serving.torch_engine import EngineConfig
from modelfleet.serving.validation import check_from_block

log = logging.getLogger(__name__)

_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}

_NO_KV = torch.empty(0, 2, 0, 0, 0, 0)
"""The data of an empty :class:`KVChunk`: no layers, no blocks."""


class VllmUnavailableError(RuntimeError):
    """A served model asks for the vLLM engine where vLLM or a CUDA device is missing."""


@dataclass(frozen=True)
class VllmModel:
    """What a vLLM replica loads; plain data, so it travels to the replica actor.

    ``model`` is what ``EngineArgs(model=...)`` takes: a Hugging Face Hub id or a local
    directory. ``source`` names the served model in the spec (``spec.models[i]``), so an
    error raised on a replica points at the field to change.
    """

    model: str
    source: str
    max_model_len: int
    tensor_parallel: int = 1


@dataclass(eq=False)
class _Request:
    """What this engine keeps of a request vLLM runs: enough to export and resume it."""

    prompt: tuple[int, ...]
    output: list[int]
    params: SamplingParams
    priority: int
    resumed_at: int
    """``len(output)`` when the request was added to vLLM (non-zero after an import)."""

    @property
    def started(self) -> bool:
        """Whether vLLM has prefilled it here: it produced a token on this engine."""
        return len(self.output) > self.resumed_at


class VllmEngine:
    """A vLLM ``LLMEngine`` behind the protocol; see the module docstring.

    ``config.block_size`` and ``config.max_running`` become vLLM's ``block_size`` and
    ``max_num_seqs``, so the manager's view of a replica uses the same block size as
    the engine; the number of KV blocks is vLLM's own, sized from
    ``gpu_memory_utilization``. ``engine_args`` adds or overrides ``EngineArgs`` fields
    (e.g. ``gpu_memory_utilization``, ``enforce_eager``).
    """

    def __init__(
        self,
        model: VllmModel,
        config: EngineConfig | None = None,
        engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.config = config or EngineConfig()
        vllm = _import_vllm(model)
        args = {
            "model": model.model,
            "max_model_len": model.max_model_len,
            "tensor_parallel_size": model.tensor_parallel,
            "block_size": self.config.block_size,
            "max_num_seqs": self.config.max_running,
            "enable_prefix_caching": True,
            "scheduling_policy": "priority",
            "disable_log_stats": True,
            **(engine_args or {}),
        }
        self.llm_engine: Any = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(**args))
        """The wrapped ``vllm.LLMEngine``."""
        self._vllm_sampling_params: Any = vllm.SamplingParams
        self._delta: Any = vllm.sampling_params.RequestOutputKind.DELTA
        self._vocab_size = int(self.llm_engine.model_config.get_vocab_size())
        self._max_model_len = int(self.llm_engine.model_config.max_model_len)
        self._requests: dict[str, _Request] = {}
        self._stash = TokenStash()

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        priority: int = 0,
    ) -> None:
        """Queue a request in vLLM; a seed is fixed now so that it survives migration."""
        self._check_new_id(request_id)
        prompt = tuple(int(token) for token in prompt_token_ids)
        self._submit(request_id, _Request(prompt, [], params.seeded(), priority, 0))

    def step(self) -> list[TokenEvent]:
        """Run one vLLM step and return the tokens it produced.

        A vLLM step may produce no token for a request (a prompt prefilled in chunks) or,
        with speculative decoding, several; each token becomes one event. Events that
        ``stream`` produced for other requests come out here, so each is delivered once.
        """
        return self._stash.step(self._advance)

    def stream(self, request_id: str) -> Iterator[TokenEvent]:
        """Yield ``request_id``'s tokens until it finishes, is aborted or is exported."""
        self._get(request_id)
        return self._stash.stream(request_id, self._advance, lambda: request_id in self._requests)

    def abort(self, request_id: str) -> None:
        """Drop a request; vLLM frees its KV blocks (prefix-cached ones stay reusable)."""
        self._get(request_id)
        self.llm_engine.abort_request([request_id])
        del self._requests[request_id]

    def load(self) -> EngineLoad:
        """Running and waiting requests and KV block usage, as this engine tracks them.

        vLLM exposes its KV pool size (``cache_config.num_gpu_blocks``) but no public
        per-engine count of used blocks, so usage is an estimate from the tokens of the
        requests vLLM has started: it ignores blocks shared through prefix caching
        (counting too many) and requests vLLM preempted back to its queue (counted as
        running). A request counts as waiting until its first token.
        """
        cache = self.llm_engine.vllm_config.cache_config
        total = int(cache.num_gpu_blocks or 0)
        block_size = int(cache.block_size)
        running = [request for request in self._requests.values() if request.started]
        used = sum(-(-(len(r.prompt) + len(r.output)) // block_size) for r in running)
        used = min(used, total)
        return EngineLoad(
            running=len(running),
            waiting=len(self._requests) - len(running),
            blocks_used=used,
            blocks_free=total - used,
            block_size=block_size,
        )

    def export_kv_blocks(self, request_id: str, from_block: int = 0) -> KVChunk:
        """An empty chunk: vLLM cannot export KV, so staging copies nothing.

        A migration stages nothing and goes straight to ``export_request``.
        """
        self._get(request_id)
        check_from_block(from_block)
        return KVChunk(from_block, _NO_KV)

    def export_request(self, request_id: str, from_block: int = 0) -> RequestState:
        """Stop the request and return its tokens and sampling state, without KV.

        The target resumes it by recomputation. Tokens vLLM computed that no ``step``
        has returned yet are dropped with the request and produced again there.
        """
        request = self._get(request_id)
        check_from_block(from_block)
        self.abort(request_id)
        return RequestState(
            request_id=request_id,
            prompt_token_ids=request.prompt,
            output_token_ids=tuple(request.output),
            params=request.params,
            priority=request.priority,
            num_cached_tokens=0,
            kv=None,
        )

    def import_kv_blocks(self, request_id: str, chunk: KVChunk) -> None:
        """Accept an empty staged chunk, the only kind a vLLM source exports.

        Raises ``ValueError`` for a chunk with blocks: vLLM has no way to write them.
        """
        self._check_new_id(request_id)
        if chunk.num_blocks:
            raise ValueError(
                f"kv_chunks: the vLLM engine cannot import KV blocks (got {chunk.num_blocks}); "
                "migrate to it by recomputation"
            )

    def import_request(self, state: RequestState, kv_chunks: Sequence[KVChunk] = ()) -> None:
        """Continue an exported request here by recomputation.

        Prompt plus output so far become the prompt vLLM prefills (cheap where prefix
        caching still holds it), ``max_tokens`` shrinks by the tokens already produced,
        and output indices continue from there. KV in ``state`` or ``kv_chunks`` is not
        used: the protocol lets any import fall back to recomputation.
        """
        self._check_new_id(state.request_id)
        output = [int(token) for token in state.output_token_ids]
        request = _Request(
            tuple(int(token) for token in state.prompt_token_ids),
            output,
            state.params.seeded(),
            state.priority,
            len(output),
        )
        self._submit(state.request_id, request)

    def _submit(self, request_id: str, request: _Request) -> None:
        """Check the request and add it to vLLM, resuming after its output so far."""
        self._check_tokens(request)
        params = request.params
        done = len(request.output)
        vllm_params = self._vllm_sampling_params(
            max_tokens=params.max_tokens - done,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=True,
            detokenize=False,
            output_kind=self._delta,
        )
        self.llm_engine.add_request(
            request_id,
            {"prompt_token_ids": [*request.prompt, *request.output]},
            vllm_params,
            priority=-request.priority,
        )
        self._requests[request_id] = request

    def _check_tokens(self, request: _Request) -> None:
        """The checks of :func:`~modelfleet.serving.validation.check_tokens`, for vLLM.

        They run here rather than inside vLLM so that bad input raises ``ValueError``
        naming our parameter, which the replica hands back to the client.
        """
        if not request.prompt:
            raise ValueError("prompt_token_ids must not be empty")
        for name, tokens in (
            ("prompt_token_ids", request.prompt),
            ("output_token_ids", request.output),
        ):
            if any(not 0 <= token < self._vocab_size for token in tokens):
                raise ValueError(f"{name} must lie in [0, {self._vocab_size})")
        length = len(request.prompt) + len(request.output)
        if length >= self._max_model_len:
            raise ValueError(
                f"prompt_token_ids has {length} tokens (with output so far); "
                f"max_model_len {self._max_model_len} leaves no room to generate"
            )
        if len(request.output) >= request.params.max_tokens:
            raise ValueError(
                f"output_token_ids already holds max_tokens={request.params.max_tokens} tokens"
            )

    def _advance(self) -> list[TokenEvent]:
        if not self._requests:
            return []
        events: list[TokenEvent] = []
        for output in self.llm_engine.step():
            request = self._requests.get(output.request_id)
            if request is not None:
                events.extend(self._accept(output.request_id, request, output))
        return events

    def _accept(self, request_id: str, request: _Request, output: Any) -> list[TokenEvent]:
        """One event per new token of a vLLM output; the last carries the finish reason."""
        completion = output.outputs[0]
        tokens = [int(token) for token in completion.token_ids]
        reason: FinishReason | None = None
        if output.finished:
            del self._requests[request_id]
            vllm_reason = str(completion.finish_reason)
            reason = _FINISH_REASONS.get(vllm_reason, "stop")
            if vllm_reason not in _FINISH_REASONS or not tokens:
                log.warning(
                    "vLLM ended request %s with finish reason %r after %d new tokens",
                    request_id,
                    vllm_reason,
                    len(tokens),
                )
        events = []
        for position, token in enumerate(tokens):
            last = position == len(tokens) - 1
            events.append(
                TokenEvent(request_id, token, len(request.output), reason if last else None)
            )
            request.output.append(token)
        return events

    def _get(self, request_id: str) -> _Request:
        request = self._requests.get(request_id)
        if request is None:
            raise ValueError(f"request_id {request_id!r} is unknown to this engine")
        return request

    def _check_new_id(self, request_id: str) -> None:
        if not request_id:
            raise ValueError("request_id must be a non-empty string")
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} already exists in this engine")


def _import_vllm(model: VllmModel) -> Any:
    """The ``vllm`` module, or a :class:`VllmUnavailableError` naming the field and the fix."""
    fix = (
        f"set {model.source}.engine: torch, or run the pool on GPU nodes with the gpu extra "
        "installed (pip install 'modelfleet[gpu]')"
    )
    if not torch.cuda.is_available():
        raise VllmUnavailableError(
            f"{model.source}.engine is vllm, but no CUDA device is visible to this replica; {fix}"
        )
    try:
        import vllm
        import vllm.sampling_params
    except ImportError as error:
        raise VllmUnavailableError(
            f"{model.source}.engine is vllm, but vLLM cannot be imported here ({error}); {fix}"
        ) from error
    return vllm
