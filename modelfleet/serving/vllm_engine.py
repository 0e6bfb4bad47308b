"""The GPU implementation of :class:`~modelfleet.serving.interface.ServingEngine`, over vLLM.

vLLM's synchronous ``LLMEngine`` (the V1 engine; written against vLLM 0.33) owns
scheduling, the paged KV cache, prefix caching and batching on the GPU. This adapter
maps requests, sampling parameters and token events onto the protocol, so a replica, the
manager and the router never know which engine runs.

Sampling parameters map onto ``vllm.SamplingParams``: logprobs and penalties one to one,
a grammar onto vLLM's structured outputs (``StructuredOutputsParams``; ``guided_decoding``
on releases before it), an adapter onto a ``LoRARequest`` of the adapters the engine was
built with. vLLM's logprobs are its "raw" ones (its default ``logprobs_mode``): taken
from the model's logits before temperature, penalties and logit bias, like the torch
engine's, but after a grammar's mask, which vLLM applies to the logits before sampling;
so under a grammar the alternatives are allowed tokens only, their log-probabilities
renormalised over them.

vLLM offers no API to read out or write in the KV blocks of one request, so this engine
migrates by recomputation, the path the protocol keeps for KV-less states:
``export_kv_blocks`` returns empty chunks, ``export_request`` aborts the request in vLLM
and hands over its tokens and sampling state without KV, and ``import_request`` re-adds
it with prompt plus the tokens so far as its prompt. Prefix caching stays on, so
recomputing a prefix the target engine has recently seen costs little. A resumed request
keeps its seed, adapter, logprobs and penalties (see :meth:`VllmEngine.import_request`
for what differs); a grammar-constrained one cannot move once it has output, because
vLLM would start its grammar afresh at the re-added tokens. What continues identically,
and what does not, is in ``docs/serving-engine.md`` ("vLLM engine").

vLLM is imported when an engine is built, so this module, and the replica that chooses
between engines, import on machines without vLLM or a GPU.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelfleet.serving.interface import (
    EngineLoad,
    FinishReason,
    GrammarSpec,
    KVChunk,
    RequestState,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    TokenStash,
)
from modelfleet.serving.torch_engine import EngineConfig
from modelfleet.serving.validation import check_from_block

log = logging.getLogger(__name__)

_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}

_NO_KV = torch.empty(0, 2, 0, 0, 0, 0)
"""The data of an empty :class:`KVChunk`: no layers, no blocks."""

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM's ``LoRAConfig`` accepts; older releases accept
only the smaller ones and reject a larger rank when the engine is built."""


class VllmUnavailableError(RuntimeError):
    """A served model asks for the vLLM engine where vLLM or a CUDA device is missing."""


@dataclass(frozen=True)
class VllmModel:
    """What a vLLM replica loads; plain data, so it travels to the replica actor.

    ``model`` is what ``EngineArgs(model=...)`` takes: a Hugging Face Hub id or a local
    directory. ``source`` names the served model in the spec (``spec.models[i]``), so an
    error raised on a replica points at the field to change. ``adapters`` are the LoRA
    adapters requests may name, as ``(name, local PEFT directory)`` in spec order.
    """

    model: str
    source: str
    max_model_len: int
    tensor_parallel: int = 1
    adapters: tuple[tuple[str, str], ...] = ()


@dataclass(eq=False)
class _Request:
    """What this engine keeps of a request vLLM runs: enough to export and resume it."""

    prompt: tuple[int, ...]
    output: list[int]
    params: SamplingParams
    priority: int
    resumed_at: int
    """``len(output)`` when the request was added to vLLM (non-zero after an import)."""
    prompt_scores: list[Mapping[int, Any] | None] = field(default_factory=list)
    """vLLM's prompt logprobs received before the first token, for its event."""

    @property
    def started(self) -> bool:
        """Whether vLLM has prefilled it here: it produced a token on this engine."""
        return len(self.output) > self.resumed_at


class VllmEngine:
    """A vLLM ``LLMEngine`` behind the protocol; see the module docstring.

    ``config.block_size`` and ``config.max_running`` become vLLM's ``block_size`` and
    ``max_num_seqs``, so the manager's view of a replica uses the same block size as
    the engine; the number of KV blocks is vLLM's own, sized from
    ``gpu_memory_utilization``. A model with adapters turns on vLLM's LoRA support for
    all of them at once, sized by their ranks. ``engine_args`` adds or
    overrides ``EngineArgs`` fields (e.g. ``gpu_memory_utilization``, ``enforce_eager``).
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
            **_lora_engine_args(model),
            **(engine_args or {}),
        }
        self.llm_engine: Any = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(**args))
        """The wrapped ``vllm.LLMEngine``."""
        self._vllm_sampling_params: Any = vllm.SamplingParams
        self._delta: Any = vllm.sampling_params.RequestOutputKind.DELTA
        self._grammar_field, self._grammar_params = _structured_outputs_api(vllm)
        self._adapters: dict[str, Any] = {
            name: vllm.lora.request.LoRARequest(
                lora_name=name, lora_int_id=number, lora_path=directory
            )
            for number, (name, directory) in enumerate(model.adapters, start=1)
        }
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
        """Queue a request in vLLM; a seed is fixed now so that it survives migration.

        Raises ``ValueError`` for bad input, naming the parameter: ``model`` for an
        adapter this engine was not built with.
        """
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

        A migration stages nothing and goes straight to ``export_request``. Raises
        ``ValueError`` for a request that cannot move (see :meth:`export_request`), so
        the manager calls the migration off before the request notices.
        """
        request = self._get(request_id)
        check_from_block(from_block)
        _check_movable(request_id, request.params, request.output)
        return KVChunk(from_block, _NO_KV)

    def export_request(self, request_id: str, from_block: int = 0) -> RequestState:
        """Stop the request and return its tokens and sampling state, without KV.

        The target resumes it by recomputation. Tokens vLLM computed that no ``step``
        has returned yet are dropped with the request and produced again there.

        Raises ``ValueError``, and leaves the request running here, for a
        grammar-constrained request with output: vLLM would restart its grammar on the
        target (see the module docstring).
        """
        request = self._get(request_id)
        check_from_block(from_block)
        _check_movable(request_id, request.params, request.output)
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

        The request keeps its seed, adapter and logprobs; prompt logprobs went out with
        its first token, so a request resumed after it asks for none. vLLM's presence
        and frequency penalties count output tokens only, and it sees the tokens so far
        as prompt, so their penalties become a logit bias of ``-(frequency_penalty *
        count + presence_penalty)`` per token. Frequency penalties continue exactly; a
        token that occurs both before and after the import has ``presence_penalty``
        subtracted twice, once in the bias and once by vLLM. Raises ``ValueError`` for a
        grammar-constrained request with output, which vLLM cannot resume.
        """
        self._check_new_id(state.request_id)
        _check_movable(state.request_id, state.params, state.output_token_ids)
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
        lora_request = self._lora_request(request.params.adapter)
        self.llm_engine.add_request(
            request_id,
            {"prompt_token_ids": [*request.prompt, *request.output]},
            self._sampling_params(request),
            lora_request=lora_request,
            priority=-request.priority,
        )
        self._requests[request_id] = request

    def _sampling_params(self, request: _Request) -> Any:
        """The ``vllm.SamplingParams`` of ``request``, resuming after its output so far."""
        params = request.params
        done = len(request.output)
        extra: dict[str, Any] = {}
        if params.grammar is not None:
            extra[self._grammar_field] = self._grammar_params(**_constraint(params.grammar))
        bias = _penalty_bias(params, request.output)
        if bias:
            extra["logit_bias"] = bias
        return self._vllm_sampling_params(
            max_tokens=params.max_tokens - done,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop_token_ids=list(params.stop_token_ids),
            logprobs=params.logprobs,
            prompt_logprobs=0 if params.prompt_logprobs and not done else None,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            ignore_eos=True,
            detokenize=False,
            output_kind=self._delta,
            **extra,
        )

    def _lora_request(self, adapter: str | None) -> Any:
        """vLLM's ``LoRARequest`` for ``adapter``, ``None`` for the base model."""
        if adapter is None:
            return None
        lora_request = self._adapters.get(adapter)
        if lora_request is None:
            raise ValueError(
                f"model: {adapter!r} is not an adapter of {self.model.source}; "
                f"its adapters are {sorted(self._adapters)}"
            )
        return lora_request

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
        """One event per new token of a vLLM output; the last carries the finish reason.

        Prompt logprobs received before the first token are gathered for its event:
        vLLM sends them with that token, and gathering loses nothing should a release
        send them per prefilled chunk instead.
        """
        completion = output.outputs[0]
        tokens = [int(token) for token in completion.token_ids]
        if request.params.prompt_logprobs and not request.output and output.prompt_logprobs:
            request.prompt_scores.extend(output.prompt_logprobs)
        scores = completion.logprobs if request.params.logprobs is not None else None
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
                self._event(
                    request_id,
                    request,
                    token,
                    None if scores is None else scores[position],
                    reason if last else None,
                )
            )
            request.output.append(token)
        return events

    def _event(
        self,
        request_id: str,
        request: _Request,
        token: int,
        scores: Mapping[int, Any] | None,
        reason: FinishReason | None,
    ) -> TokenEvent:
        """The event of ``token``, next in ``request``'s output, with its logprobs.

        ``scores`` is vLLM's logprobs of this position: the top ``logprobs`` tokens and
        the sampled one, which vLLM adds when it ranks lower.
        """
        index = len(request.output)
        chosen = None if scores is None else scores.get(token)
        first = index == 0 and request.params.prompt_logprobs
        return TokenEvent(
            request_id,
            token,
            index,
            reason,
            logprob=None if chosen is None else float(chosen.logprob),
            top_logprobs=(
                () if scores is None else _top_logprobs(scores, request.params.logprobs or 0)
            ),
            prompt_logprobs=_prompt_logprobs(request) if first else None,
        )

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


def _lora_engine_args(model: VllmModel) -> dict[str, Any]:
    """The ``EngineArgs`` that let vLLM serve ``model``'s adapters; none without adapters.

    Every adapter may be in one batch (``max_loras``), and ``max_lora_rank`` is the
    largest adapter's rank (``r`` in its ``adapter_config.json``) rounded up to a rank
    vLLM supports, since vLLM sizes its LoRA buffers for that rank up front. Raises
    ``ValueError`` naming ``<source>.adapters[i]`` for an adapter whose config cannot be
    read or whose rank vLLM cannot serve.
    """
    if not model.adapters:
        return {}
    ranks = [_adapter_rank(model, position) for position in range(len(model.adapters))]
    largest = max(ranks)
    if largest > _LORA_RANKS[-1]:
        position = ranks.index(largest)
        raise ValueError(
            f"{model.source}.adapters[{position}]: rank r={largest} exceeds {_LORA_RANKS[-1]}, "
            "the largest LoRA rank vLLM serves"
        )
    return {
        "enable_lora": True,
        "max_loras": len(model.adapters),
        "max_lora_rank": next(rank for rank in _LORA_RANKS if rank >= largest),
    }


def _adapter_rank(model: VllmModel, position: int) -> int:
    """The rank ``r`` of adapter ``position`` of ``model``, from its ``adapter_config.json``."""
    name, directory = model.adapters[position]
    path = Path(directory) / "adapter_config.json"
    field_name = f"{model.source}.adapters[{position}]"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{field_name} ({name}): cannot read the PEFT config {path}: {error}"
        ) from error
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(
            f"{field_name} ({name}): {path} needs a positive integer 'r', got {rank!r}"
        )
    return rank


def _check_movable(request_id: str, params: SamplingParams, output: Sequence[int]) -> None:
    """Raise ``ValueError`` for a request this engine cannot move by recomputation.

    A grammar-constrained request with output would restart its grammar at the tokens
    re-added as prompt, producing output its grammar rejects. Raised by an export, the
    manager takes the error as "cannot migrate now": the request stays and finishes
    where it runs. Raised by the import that recovers a request from a dead replica, it
    ends the request with this message rather than with output that breaks its grammar.
    """
    if params.grammar is not None and output:
        raise ValueError(
            f"request_id {request_id!r}: a grammar-constrained request cannot move to or "
            "from a vLLM replica once it has output; vLLM would restart its grammar at the "
            "tokens re-added as prompt"
        )


def _constraint(grammar: GrammarSpec) -> dict[str, Any]:
    """The fields of vLLM's structured-outputs parameters that express ``grammar``."""
    if grammar.kind == "json_object":
        return {"json_object": True}
    return {"json": grammar.schema}


def _penalty_bias(params: SamplingParams, output: Sequence[int]) -> dict[int, float]:
    """The logit bias that carries the penalties of ``output`` into a resumed request."""
    if not params.penalised:
        return {}
    return {
        token: -(params.frequency_penalty * count + params.presence_penalty)
        for token, count in Counter(output).items()
    }


def _top_logprobs(scores: Mapping[int, Any], count: int) -> tuple[TokenLogprob, ...]:
    """The ``count`` most likely tokens of one position of vLLM's logprobs, most likely
    first: the sampled token only if it is one of them, as on the torch engine.

    vLLM's ``rank`` (from 1, in the vocabulary) tells its top tokens from a lower-ranked
    sampled token it adds; a sampled token tied with the last of them keeps ``count``.
    """
    ranked = sorted(scores.items(), key=lambda item: (item[1].rank, -item[1].logprob))
    top = [TokenLogprob(int(token), float(lp.logprob)) for token, lp in ranked if lp.rank <= count]
    return tuple(top[:count])


def _prompt_logprobs(request: _Request) -> tuple[TokenLogprob | None, ...]:
    """Each prompt token's log-probability from vLLM's prompt logprobs; ``None`` first."""
    return tuple(
        None if scores is None else TokenLogprob(token, float(scores[token].logprob))
        for token, scores in zip(request.prompt, request.prompt_scores, strict=False)
    )


def _structured_outputs_api(vllm: Any) -> tuple[str, Any]:
    """The ``SamplingParams`` field and parameter class of vLLM's structured outputs.

    ``StructuredOutputsParams`` (field ``structured_outputs``) replaced
    ``GuidedDecodingParams`` (field ``guided_decoding``), which older releases take; both
    have ``json`` and ``json_object``.
    """
    module = vllm.sampling_params
    if hasattr(module, "StructuredOutputsParams"):
        return "structured_outputs", module.StructuredOutputsParams
    return "guided_decoding", module.GuidedDecodingParams


def _import_vllm(model: VllmModel) -> Any:
    """The ``vllm`` module, or a :class:`VllmUnavailableError` naming the field and the fix."""
    fix = (
        f"set {model.source}.engine: Torch, or run the pool on GPU nodes with the gpu extra "
        "installed (pip install 'modelfleet[gpu]')"
    )
    if not torch.cuda.is_available():
        raise VllmUnavailableError(
            f"{model.source}.engine is VLLM, but no CUDA device is visible to this replica; {fix}"
        )
    try:
        import vllm
        import vllm.lora.request
        import vllm.sampling_params
    except ImportError as error:
        raise VllmUnavailableError(
            f"{model.source}.engine is VLLM, but vLLM cannot be imported here ({error}); {fix}"
        ) from error
    return vllm
