"""Routing a fleet of the zoo's models: accuracy and cost of each strategy of a real router.

Run: ``python benchmarks/routing.py``. Every figure is a ratio against a baseline
measured in the same run (always sending every query to the strongest model), so the
numbers compare across machines; nothing is asserted.

The fleet is one real ModelPool per zoo recipe (torch engine, one replica each) on a
local Ray with Serve on loopback, and every routed query goes through a real
RoutingPolicy router app over HTTP, exactly as a client would send it. Queries are the
zoo's held-out problems with exact answers, mixed evenly over the five skills, posed
through the chat endpoint and compared after stripping, as the zoo's own evaluation does.

Price: a target's ``costPer1kTokens`` is its parameter count in millions. Forward
compute per token is about 2N FLOPs for N parameters, so price proportional to N is
what serving the same tokens costs on the same hardware; the constant does not matter
because every cost is reported as a ratio to the strongest model's.

Steps, and why in this order:

1. Calibration (held-out problems disjoint from the test part; none from the training
   split, which the models have memorised). Query clusters are learned without labels
   (MiniLM embeddings, spherical k-means), named c0..c4 and declared by their most
   typical utterances. Each calibration query is sent to every target pinned by name
   through a router, and an exact-match verdict is posted as feedback: the router learns
   per-target, per-cluster success. The learned rows are read back from
   ``/v1/router/status`` and handed (``learned``) to every strategy's router, which is
   how a restarted router resumes. Strategy knobs (the cascade's confidence threshold,
   and the ``minQuality`` of the ``cost-of-pass-floor`` variant; plain ``cost-of-pass``
   runs without a floor, as it ships) are chosen on calibration answers only, by running
   the router's own pure strategy code over them: never on the test part.
2. The test part is sent to every target pinned (a matrix of answers): it gives the
   baselines (always-strongest, always-cheapest, random, and an oracle that knows the
   answers) on exactly the queries the strategies see.
3. Each strategy gets its own router app over the same pools and serves the test part,
   streamed (the router measures time to first token only on streams, and
   least-latency ranks by it). Before measuring, one streamed calibration query pinned
   to each target warms the router's telemetry (tokens per request and TTFT), as a
   router that has been running would have it; its spend is excluded. A strategy's cost
   is the router's own spend, which includes every stage a cascade paid for; a
   baseline's is price times total tokens of the answers it would have returned.

Target stated in the output: at least 95% of the strongest model's accuracy at no more
than 0.2x its cost. Ends with ``RESULT`` lines ``routing_quality_vs_strongest`` and
``routing_cost_vs_strongest`` (the headline strategy), then one such pair per strategy.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from common.bootstrap import interval
from common.result_lines import print_result

from modelfleet.api.routingpolicy import Strategy
from modelfleet.routing.clusters import learn_clusters, representatives
from modelfleet.routing.embedding import QueryEncoder
from modelfleet.routing.profiles import ProfileBook, import_learned
from modelfleet.routing.router import REASON_HEADER, TARGET_HEADER
from modelfleet.routing.strategies import Candidate, Objectives, RouteContext, choose_route
from modelfleet.routing.wire import confidence, event_payload, total_tokens
from modelfleet.zoo.cache import ensure_model
from modelfleet.zoo.evaluation import MAX_REPLY_TOKENS
from modelfleet.zoo.manifest import read_manifest
from modelfleet.zoo.recipes import RECIPES
from modelfleet.zoo.skills import SKILLS, Split

TARGET_QUALITY = 0.95
"""Quality vs the strongest model a strategy must reach..."""
TARGET_COST = 0.2
"""...at no more than this fraction of its cost."""
MAX_MODEL_LEN = 512
MIN_QUALITY_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
THRESHOLD_GRID = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)
STRATEGIES = (
    "weighted",
    "least-latency",
    "cost-of-pass",
    "cost-of-pass-floor",
    "capability",
    "cascade",
)
"""``cost-of-pass`` runs as it ships (no quality floor); ``cost-of-pass-floor`` adds the
``minQuality`` chosen on calibration. Both are declared before the test part is seen."""
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One held-out question with its only correct reply."""

    skill: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Reply:
    """One answer as the client saw it, and what the router said about it."""

    target: str
    reason: str
    text: str
    tokens: int
    confidence: float
    answer_id: str


@dataclass
class Outcome:
    """A strategy's or baseline's result on the test part."""

    name: str
    correct: np.ndarray
    """Per test query: 1 when right (for the random baseline, the expected value)."""
    cost: float
    decisions: dict[str, int] = field(default_factory=dict)
    baseline: bool = False

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


# ---- problems -------------------------------------------------------------------------


def make_problems(seed: int, calibration: int, test: int) -> tuple[list[Problem], list[Problem]]:
    """Held-out problems per skill, distinct prompts, split into disjoint halves.

    Both parts come from the held-out split: scoring on training problems would reward
    memorisation. Each part is mixed evenly over the skills and shuffled.
    """
    calib: list[Problem] = []
    tests: list[Problem] = []
    for name, skill in SKILLS.items():
        seen: dict[str, Problem] = {}
        for example in skill.stream(Split.HELDOUT, seed):
            seen.setdefault(example.prompt, Problem(name, example.prompt, example.answer))
            if len(seen) == calibration + test:
                break
        problems = list(seen.values())
        calib += problems[:calibration]
        tests += problems[calibration:]
    rng = random.Random(seed)
    rng.shuffle(calib)
    rng.shuffle(tests)
    return calib, tests


# ---- the fleet ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def price_table(names: Sequence[str]) -> dict[str, float]:
    """Price per 1k tokens of each model: its parameters in millions (about 2N FLOPs per
    token), read from the zoo manifest (training the model first if it is not cached)."""
    prices = {}
    for name in names:
        directory = ensure_model(name, progress=lambda line: print(f"  {line}", flush=True))
        manifest = read_manifest(directory)
        assert manifest is not None, f"{name}: no zoo.json in {directory}"
        prices[name] = manifest.parameters / 1e6
    return prices


def pool_spec(model: str) -> dict[str, Any]:
    """One torch replica of the zoo model, with the small options the Ray tests use."""
    return {
        "models": [
            {
                "name": model,
                "uri": f"zoo://{model}",
                "maxModelLen": MAX_MODEL_LEN,
                "engine": "Torch",
            }
        ],
        "replicas": 1,
        "migration": {"enabled": False, "maxConcurrent": 2},
        "auth": {"mode": "None"},
        "servingOptions": {"replicaNumCpus": 0.5, "controlIntervalS": 0.05},
    }


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, limit_s: float) -> None:
    """Poll ``check`` until it holds; an error naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {limit_s:.0f}s")


async def wait_pool(client: httpx.AsyncClient, base: str, model: str) -> None:
    """Until the pool answers a real completion: its engine replica may still be loading,
    and a router would count a 503 there against the target's health."""

    async def answers() -> bool:
        body = {"model": model, "messages": [{"role": "user", "content": "Sort: b a"}]}
        response = await client.post(f"{base}/v1/chat/completions", json=body | {"max_tokens": 2})
        return response.status_code == 200

    await wait_until(answers, f"pool {model}", 300)


async def wait_router(client: httpx.AsyncClient, base: str) -> None:
    async def up() -> bool:
        return (await client.get(f"{base}/v1/router/status")).status_code == 200

    await wait_until(up, f"router {base}", 300)


def deploy_router(serve_url: str, name: str, config: dict[str, Any]) -> str:
    """Deploy a router app at ``/<name>`` that checks no keys; its base URL."""
    from modelfleet.routing.app import deploy

    policy = {**config["policy"], "auth": {"mode": "None"}}
    deploy({**config, "policy": policy}, name=name, route_prefix=f"/{name}")
    return f"{serve_url}/{name}"


# ---- HTTP ---------------------------------------------------------------------------


async def ask(
    client: httpx.AsyncClient,
    base: str,
    model: str,
    problem: Problem,
    *,
    stream: bool = False,
    logprobs: bool = False,
) -> Reply:
    """One chat question through a router, greedy, as the zoo's evaluation poses it."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": problem.prompt}],
        "temperature": 0,
        "max_tokens": MAX_REPLY_TOKENS,
    }
    if logprobs:
        body["logprobs"] = True
    url = f"{base}/v1/chat/completions"
    if not stream:
        response = await client.post(url, json=body)
        response.raise_for_status()
        data = response.json()
        return Reply(
            target=response.headers[TARGET_HEADER],
            reason=response.headers.get(REASON_HEADER, ""),
            text=(data["choices"][0]["message"]["content"] or "").strip(),
            tokens=total_tokens(data),
            confidence=confidence(data) if logprobs else math.nan,
            answer_id=str(data["id"]),
        )
    async with client.stream("POST", url, json=body | {"stream": True}) as response:
        if response.status_code >= 400:
            await response.aread()
            response.raise_for_status()
        parts: list[str] = []
        answer_id = ""
        async for line in response.aiter_lines():
            event = event_payload(line)
            if event is None:
                continue
            answer_id = answer_id or str(event.get("id") or "")
            for choice in event.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
        return Reply(
            target=response.headers[TARGET_HEADER],
            reason=response.headers.get(REASON_HEADER, ""),
            text="".join(parts).strip(),
            tokens=0,
            confidence=math.nan,
            answer_id=answer_id,
        )


async def retrying(make: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
    """``make()`` again after a server error or a broken connection (a replica hiccup on
    a loaded machine should not end a ten-minute run); client errors are raised."""
    for attempt in range(attempts):
        try:
            return await make()
        except httpx.HTTPStatusError as error:
            if error.response.status_code < 500 or attempt == attempts - 1:
                raise
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        await asyncio.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


async def gather_limited(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``jobs`` with at most ``limit`` in flight; results in the jobs' order."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await retrying(job)

    return list(await asyncio.gather(*(run(job) for job in jobs)))


async def status(client: httpx.AsyncClient, base: str) -> dict[str, Any]:
    response = await client.get(f"{base}/v1/router/status")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


# ---- calibration choices, on the router's own strategy code ---------------------------


@dataclass(frozen=True)
class Matrix:
    """Every target's answer to every problem of one part."""

    problems: list[Problem]
    replies: dict[str, list[Reply]]

    def correct(self, target: str) -> np.ndarray:
        return np.array(
            [r.text == p.answer for r, p in zip(self.replies[target], self.problems, strict=True)],
            dtype=float,
        )

    def tokens(self, target: str) -> np.ndarray:
        return np.array([r.tokens for r in self.replies[target]], dtype=float)


def simulate_cost_of_pass(
    matrix: Matrix,
    clusters: list[str],
    book: ProfileBook,
    prices: dict[str, float],
    min_quality: float,
) -> tuple[float, float]:
    """(accuracy, cost) of cost-of-pass on ``matrix`` at ``min_quality``, deciding with
    the router's ``choose_route`` from the learned book and mean tokens per target."""
    tokens = {t: float(matrix.tokens(t).mean()) for t in prices}
    right = {t: matrix.correct(t) for t in prices}
    hits, cost = 0.0, 0.0
    for i, cluster in enumerate(clusters):
        candidates = tuple(
            Candidate(t, book.success(t, cluster), prices[t], tokens=tokens[t]) for t in prices
        )
        ctx = RouteContext(Strategy.COST_OF_PASS, candidates, Objectives(min_quality=min_quality))
        chosen = choose_route(ctx).order[0]
        hits += right[chosen][i]
        cost += prices[chosen] * matrix.tokens(chosen)[i] / 1000
    return hits / len(clusters), cost


def simulate_cascade(
    matrix: Matrix, order: Sequence[str], prices: dict[str, float], threshold: float
) -> tuple[float, float]:
    """(accuracy, cost) of a cascade on ``matrix``: each stage is paid for; the first
    whose confidence reaches ``threshold`` answers, else the last stage does."""
    hits, cost = 0.0, 0.0
    for i, problem in enumerate(matrix.problems):
        for position, target in enumerate(order):
            reply = matrix.replies[target][i]
            cost += prices[target] * reply.tokens / 1000
            if position == len(order) - 1 or reply.confidence >= threshold:
                hits += reply.text == problem.answer
                break
    return hits / len(matrix.problems), cost


def pick_knob(results: dict[float, tuple[float, float]], reference: tuple[float, float]) -> float:
    """The setting whose calibration result is cheapest among those reaching the target
    quality against ``reference`` (the strongest model's accuracy and cost on the same
    queries); without one, the most accurate (cheaper on ties)."""
    accuracy = reference[0]
    good = [k for k, (a, _) in results.items() if a >= TARGET_QUALITY * accuracy]
    if good:
        return min(good, key=lambda k: (results[k][1], -results[k][0]))
    return max(results, key=lambda k: (results[k][0], -results[k][1]))


# ---- report -------------------------------------------------------------------------


def meets(outcome: Outcome, strongest: Outcome) -> bool:
    return (
        outcome.accuracy >= TARGET_QUALITY * strongest.accuracy
        and outcome.cost <= TARGET_COST * strongest.cost
    )


def plot_frontier(outcomes: list[Outcome], strongest: Outcome, path: Path) -> None:
    """Accuracy against cost (vs the strongest model) with the Pareto frontier and the
    target region, so where each strategy stands is seen at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    points = [(o.cost / strongest.cost, o.accuracy, o) for o in outcomes]
    ax.axvspan(0, TARGET_COST, ymin=0, ymax=1, color="tab:green", alpha=0.06)
    ax.axhline(TARGET_QUALITY * strongest.accuracy, color="tab:green", ls=":", lw=1)
    ax.axvline(TARGET_COST, color="tab:green", ls=":", lw=1)
    frontier: list[tuple[float, float]] = []
    for x, y, _ in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    ax.plot(*zip(*frontier, strict=True), color="grey", lw=1, ls="--", label="Pareto frontier")
    labels: dict[tuple[float, float], list[str]] = {}
    for x, y, outcome in points:
        marker, colour = ("s", "tab:blue") if outcome.baseline else ("o", "tab:red")
        ax.scatter(x, y, marker=marker, color=colour, zorder=3)
        labels.setdefault((round(x, 3), round(y, 3)), []).append(outcome.name)
    for (x, y), named in labels.items():
        # Coinciding points (a strategy that always picks one target) share one label.
        text = " = ".join(named)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("cost vs always-strongest (router spend, price ∝ parameters)")
    ax.set_ylabel("exact-match accuracy on held-out queries")
    ax.set_title(
        f"Routing the zoo: target ≥{TARGET_QUALITY:.0%} of strongest accuracy "
        f"at ≤{TARGET_COST}x its cost (green)"
    )
    ax.set_xlim(left=0)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the run --------------------------------------------------------------------------


@dataclass
class Bench:
    """The fleet and the HTTP client shared by every step."""

    serve_url: str
    pools: dict[str, str]
    prices: dict[str, float]
    client: httpx.AsyncClient
    concurrency: int

    def targets(self) -> list[dict[str, Any]]:
        return [
            {"name": t, "pool": t, "model": t, "costPer1kTokens": f"{p:.6f}", "weight": 1.0}
            for t, p in self.prices.items()
        ]

    def endpoints(self) -> dict[str, str]:
        return {t: f"{base}/v1" for t, base in self.pools.items()}


async def pinned_matrix(
    bench: Bench, base: str, problems: list[Problem], feedback: bool
) -> tuple[Matrix, list[str]]:
    """Every problem to every target, pinned by name through the router at ``base``, with
    log-probabilities (for the cascade's confidence). With ``feedback``, each verdict is
    posted, and the cluster the router filed each problem under is returned."""
    clusters = [""] * len(problems)

    async def one(target: str, i: int) -> Reply:
        problem = problems[i]
        reply = await ask(bench.client, base, target, problem, logprobs=True)
        if feedback:
            verdict = {"id": reply.answer_id, "correct": reply.text == problem.answer}
            response = await bench.client.post(f"{base}/v1/feedback", json=verdict)
            response.raise_for_status()
            clusters[i] = response.json()["cluster"]
        return reply

    jobs = [(lambda t=t, i=i: one(t, i)) for i in range(len(problems)) for t in bench.prices]
    replies = await gather_limited(jobs, bench.concurrency)
    by_target: dict[str, list[Reply]] = {t: [] for t in bench.prices}
    for (_, target), reply in zip(
        [(i, t) for i in range(len(problems)) for t in bench.prices], replies, strict=True
    ):
        by_target[target].append(reply)
    return Matrix(problems, by_target), clusters


async def measure_strategy(
    bench: Bench,
    name: str,
    policy: dict[str, Any],
    learned: list[dict[str, Any]],
    warmup: Problem | None,
    tests: list[Problem],
) -> Outcome:
    """Serve the test part through a fresh router for ``policy``; its spend is the cost."""
    from ray import serve

    app = f"route-{name}"
    config = {
        "policyName": app,
        "policy": policy,
        "endpoints": bench.endpoints(),
        "learned": learned,
    }
    started = time.monotonic()
    base = deploy_router(bench.serve_url, app, config)
    await wait_router(bench.client, base)
    if warmup is not None:
        for target in bench.prices:
            await retrying(lambda t=target: ask(bench.client, base, t, warmup, stream=True))
    before = await status(bench.client, base)
    jobs = [(lambda p=p: ask(bench.client, base, app, p, stream=True)) for p in tests]
    replies = await gather_limited(jobs, bench.concurrency)
    after = await status(bench.client, base)
    serve.delete(app)
    decisions = {
        t: after["decisions"].get(t, 0) - before["decisions"].get(t, 0) for t in bench.prices
    }
    correct = np.array([r.text == p.answer for r, p in zip(replies, tests, strict=True)], float)
    cost = float(Decimal(after["spend"]["cost"]) - Decimal(before["spend"]["cost"]))
    reasons = sorted({r.reason.split(":")[0] for r in replies})
    print(
        f"  {name:<14} accuracy {correct.mean():.3f}  cost {cost:.4f}  "
        f"{time.monotonic() - started:.0f}s  ({', '.join(reasons)}; e.g. {replies[0].reason!r})",
        flush=True,
    )
    return Outcome(name, correct, cost, decisions)


def baselines(matrix: Matrix, prices: dict[str, float], strongest: str, seed: int) -> list[Outcome]:
    """Always-strongest, always-cheapest, always-dearest (when the largest model is not the
    strongest, the natural reference for a price target), random (expected over seeds: the mean over
    targets, since each pick is uniform) and the oracle (cheapest right target, else the
    cheapest), priced as price times tokens of the answers each would return."""
    cost = {t: prices[t] * matrix.tokens(t) / 1000 for t in prices}
    right = {t: matrix.correct(t) for t in prices}
    cheapest = min(prices, key=prices.__getitem__)
    n = len(matrix.problems)
    outcomes = [
        Outcome(
            "always-strongest",
            right[strongest],
            float(cost[strongest].sum()),
            {strongest: n},
            True,
        ),
        Outcome(
            "always-cheapest", right[cheapest], float(cost[cheapest].sum()), {cheapest: n}, True
        ),
    ]
    dearest = max(prices, key=prices.__getitem__)
    if dearest != strongest:
        outcomes.append(
            Outcome(
                "always-dearest", right[dearest], float(cost[dearest].sum()), {dearest: n}, True
            )
        )
    rng = np.random.default_rng(seed)
    names = list(prices)
    draws = rng.integers(0, len(names), (16, n))
    sampled = [float(sum(cost[names[j]][i] for i, j in enumerate(row))) for row in draws]
    expected_right = np.mean([right[t] for t in names], axis=0)
    outcomes.append(
        Outcome(
            "random",
            expected_right,
            float(np.mean([cost[t].sum() for t in names])),
            {t: round(n / len(names)) for t in names},
            True,
        )
    )
    by_price = sorted(names, key=prices.__getitem__)
    oracle_right, oracle_cost, oracle_decisions = np.zeros(n), 0.0, dict.fromkeys(names, 0)
    for i in range(n):
        chosen = next((t for t in by_price if right[t][i]), cheapest)
        oracle_right[i] = right[chosen][i]
        oracle_cost += cost[chosen][i]
        oracle_decisions[chosen] += 1
    outcomes.append(Outcome("oracle", oracle_right, oracle_cost, oracle_decisions, True))
    print(
        f"  random: expected cost {outcomes[-2].cost:.4f}; 16 sampled seeds "
        f"{min(sampled):.4f}..{max(sampled):.4f}"
    )
    return outcomes


def print_table(
    outcomes: list[Outcome], strongest: Outcome, dearest: Outcome | None, names: list[str]
) -> None:
    """The results table; ``*`` marks strategies meeting the target against the strongest,
    ``+`` those that would meet it against the dearest model (when that is another)."""
    short = {t: t.replace("qwen-", "q-").replace("llama-", "l-") for t in names}
    extra = f"{'quality':>9}{'cost':>7}" if dearest else ""
    print(
        f"{'strategy':<17}{'accuracy':>9} {'95% CI':>14}{'cost':>9}{'quality':>9}{'cost':>7}"
        f"{extra}  decisions ({', '.join(short[t] for t in names)})"
    )
    extra = f"{'vs dear.':>9}{'vs dear.':>7}" if dearest else ""
    print(f"{'':<17}{'':>9} {'':>14}{'':>9}{'vs str.':>9}{'vs str.':>7}{extra}")
    for i, outcome in enumerate(outcomes):
        low, high = interval(outcome.correct, np.mean, seed=i)
        ratios = [outcome.accuracy / strongest.accuracy, outcome.cost / strongest.cost]
        if dearest:
            ratios += [outcome.accuracy / dearest.accuracy, outcome.cost / dearest.cost]
        shown = "".join(f"{r:>9.3f}" if j % 2 == 0 else f"{r:>7.3f}" for j, r in enumerate(ratios))
        flag = ""
        if not outcome.baseline and meets(outcome, strongest):
            flag += " *"
        if not outcome.baseline and dearest and meets(outcome, dearest):
            flag += " +"
        decisions = " / ".join(str(outcome.decisions.get(t, 0)) for t in names)
        print(
            f"{outcome.name:<17}{outcome.accuracy:>9.3f} [{low:.3f}, {high:.3f}]"
            f"{outcome.cost:>9.4f}{shown}  {decisions}{flag}"
        )


async def run(args: argparse.Namespace, serve_url: str, prices: dict[str, float]) -> None:
    from modelfleet.serving.app import deploy as deploy_pool

    names = list(prices)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
        started = time.monotonic()
        pools = {}
        for name in names:
            deploy_pool(pool_spec(name), name=name, route_prefix=f"/{name}")
            pools[name] = f"{serve_url}/{name}"
        await asyncio.gather(*(wait_pool(client, pools[n], n) for n in names))
        print(f"pools ready in {time.monotonic() - started:.0f}s", flush=True)
        bench = Bench(serve_url, pools, prices, client, args.concurrency)

        calib, tests = make_problems(args.seed, args.calibration, args.test)
        print(
            f"\nproblems: {len(calib)} calibration + {len(tests)} test, held-out split, "
            f"{args.calibration} + {args.test} per skill, disjoint prompts"
        )

        # Clusters learned without labels from the calibration prompts.
        encoder = QueryEncoder()
        vectors = encoder.encode([p.prompt for p in calib])
        labels = learn_clusters(vectors, k=args.clusters, seed=args.seed)
        reps = representatives(vectors, labels, per_cluster=args.examples)
        query_clusters = [
            {"name": f"c{label}", "examples": [calib[i].prompt for i in rows]}
            for label, rows in reps.items()
        ]
        print("\nlearned query clusters (skill composition of the calibration prompts):")
        for label, rows in reps.items():
            members = [calib[i].skill for i in np.flatnonzero(labels == label)]
            mix = ", ".join(f"{s} {members.count(s)}" for s in SKILLS if members.count(s))
            print(f"  c{label}: {mix}; e.g. {calib[rows[0]].prompt!r}")

        # Calibration and the test matrix, pinned through one router.
        started = time.monotonic()
        base_policy = {"targets": bench.targets(), "queryClusters": query_clusters}
        learner = "route-calibration"
        config = {"policyName": learner, "policy": base_policy, "endpoints": bench.endpoints()}
        base = deploy_router(serve_url, learner, config)
        await wait_router(client, base)
        calibration, clusters = await pinned_matrix(bench, base, calib, feedback=True)
        learned: list[dict[str, Any]] = (await status(client, base))["profiles"]
        matrix, _ = await pinned_matrix(bench, base, tests, feedback=False)
        print(
            f"\npinned answers: {len(calib) + len(tests)} problems x {len(names)} targets "
            f"in {time.monotonic() - started:.0f}s; {len(learned)} learned profile rows"
        )
        print(f"{'target':<18}" + "".join(f"{s:>10}" for s in SKILLS) + f"{'calib':>8}{'test':>8}")
        for t in names:
            right = calibration.correct(t)
            per_skill = [
                np.mean([r for r, p in zip(right, calib, strict=True) if p.skill == s])
                for s in SKILLS
            ]
            print(
                f"{t:<18}"
                + "".join(f"{v:>10.2f}" for v in per_skill)
                + f"{right.mean():>8.3f}{matrix.correct(t).mean():>8.3f}"
            )
        strongest = max(names, key=lambda t: calibration.correct(t).mean())
        print(f"strongest on calibration: {strongest}")

        # Knobs chosen on calibration answers only.
        book = ProfileBook({}, import_learned(learned))
        reference = (
            float(calibration.correct(strongest).mean()),
            float((prices[strongest] * calibration.tokens(strongest) / 1000).sum()),
        )
        cop = {
            q: simulate_cost_of_pass(calibration, clusters, book, prices, q)
            for q in MIN_QUALITY_GRID
        }
        min_quality = pick_knob(cop, reference)
        order = sorted(names, key=prices.__getitem__)
        cascade = {h: simulate_cascade(calibration, order, prices, h) for h in THRESHOLD_GRID}
        threshold = pick_knob(cascade, reference)
        print(
            "\ncalibration (accuracy, cost vs strongest) by cost-of-pass minQuality: "
            + ", ".join(f"{q:g}: {a:.3f}/{c / reference[1]:.2f}" for q, (a, c) in cop.items())
            + f" -> {min_quality:g}"
        )
        print(
            f"calibration by cascade threshold ({' -> '.join(order)}): "
            + ", ".join(f"{h:g}: {a:.3f}/{c / reference[1]:.2f}" for h, (a, c) in cascade.items())
            + f" -> {threshold:g}"
        )
        from ray import serve

        serve.delete(learner)

        policies: dict[str, dict[str, Any]] = {
            "weighted": {**base_policy, "strategy": Strategy.WEIGHTED},
            "least-latency": {**base_policy, "strategy": Strategy.LEAST_LATENCY},
            "cost-of-pass": {**base_policy, "strategy": Strategy.COST_OF_PASS},
            "cost-of-pass-floor": {
                **base_policy,
                "strategy": Strategy.COST_OF_PASS,
                "objectives": {"minQuality": min_quality},
            },
            "capability": {**base_policy, "strategy": Strategy.CAPABILITY},
            "cascade": {
                **base_policy,
                "strategy": Strategy.CASCADE,
                "cascade": {"order": order, "confidenceThreshold": threshold},
            },
        }
        print(f"\nstrategies, each its own router over the pools, {len(tests)} test queries:")
        warmup = None if args.no_warmup else calib[0]
        outcomes = []
        for name in args.strategies:
            outcomes.append(
                await measure_strategy(bench, name, policies[name], learned, warmup, tests)
            )

    base_outcomes = baselines(matrix, prices, strongest, args.seed)
    reference_outcome = base_outcomes[0]
    everything = outcomes + base_outcomes
    print(
        f"\nheld-out test, {len(tests)} queries; * meets the target (quality >= "
        f"{TARGET_QUALITY} and cost <= {TARGET_COST} vs always-strongest = {strongest})"
    )
    dearest = next((o for o in base_outcomes if o.name == "always-dearest"), None)
    if dearest is not None:
        print(
            f"the strongest model is not the dearest ({max(prices, key=prices.__getitem__)}); "
            "ratios against the dearest are shown too, + marks the target met against it"
        )
    print_table(everything, reference_outcome, dearest, names)
    plot = args.out / "routing_frontier.png"
    plot_frontier(everything, reference_outcome, plot)
    print(f"\nfrontier plot: {plot}")

    meeting = [o for o in outcomes if meets(o, reference_outcome)]
    print(
        "strategies meeting the target: "
        + (", ".join(o.name for o in meeting) if meeting else "none")
    )
    if dearest is not None:
        against = [o.name for o in outcomes if meets(o, dearest)]
        print(f"strategies that would meet it against the dearest: {', '.join(against) or 'none'}")
    if meeting:
        best = max(meeting, key=lambda o: (o.accuracy, -o.cost))
        why = "the most accurate strategy meeting the target"
    else:
        close = [o for o in outcomes if o.accuracy >= TARGET_QUALITY * reference_outcome.accuracy]
        if close:
            best = min(close, key=lambda o: o.cost)
            why = f"none meets the target; the cheapest with quality >= {TARGET_QUALITY}"
        else:
            best = max(outcomes, key=lambda o: (o.accuracy, -o.cost))
            why = f"none reaches quality {TARGET_QUALITY}; the most accurate"
    print(f"headline: {best.name} ({why})")
    print(f"# total {time.monotonic() - args.started:.0f}s\n")
    for suffix, outcome in [("", best), *(("_" + o.name.replace("-", "_"), o) for o in outcomes)]:
        quality = outcome.accuracy / reference_outcome.accuracy
        cost = outcome.cost / reference_outcome.cost
        print_result(f"routing_quality_vs_strongest{suffix}", quality)
        print_result(f"routing_cost_vs_strongest{suffix}", cost)


def main() -> None:
    """Parse arguments, start the fleet, run every step, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--calibration", type=int, default=60, help="problems per skill")
    parser.add_argument(
        "--test", type=int, default=50, help="problems per skill (facts has 120 in all)"
    )
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--examples", type=int, default=8, help="utterances per cluster")
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-warmup", action="store_true", help="measure cold routers")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["OMP_NUM_THREADS"] = "1"
    import ray
    import torch
    from ray import serve

    torch.set_num_threads(1)
    args.started = time.monotonic()
    prices = price_table(args.models)
    print("price per 1k tokens = parameters / 1e6 (forward FLOPs per token ~ 2N):")
    for name, price in prices.items():
        print(f"  {name:<18}{price:>8.4f}")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        asyncio.run(run(args, f"http://127.0.0.1:{port}", prices))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
