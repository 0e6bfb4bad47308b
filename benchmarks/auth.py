"""API-key authentication: a brute-force attack on a real pool, and the key comparison's
timing.

Run: ``python benchmarks/auth.py``. Every figure is a ratio against a baseline measured in
the same run, so the numbers compare across machines.

Brute force. A pool of the builtin mini model (one replica) checks API keys written into
a directory the way the local backend writes a Secret, on a local Ray with Serve's HTTP
proxy on loopback. A client sends right-key completions (``max_tokens`` small) one after
another and times each through the proxy. Each of REPEATS repeats runs three phases in a
rotated order: the right key alone (the baseline); while an attacker, in a process of its
own so it does not share the client's interpreter lock, sends ATTACK wrong keys from a few
threads as fast as it can through the same proxy (only the client's requests that start
and end while the attack lasts count), then the right key alone again right after it;
and, as the control, the same flood with a valid key asking for a model the pool does not
serve (each a 404 once the key has been checked: the cheapest request a legitimate
client can make costs what a wrong key costs, or more). Every wrong key must get 401 and
every control request 404 (asserted). Printed: p50/p99 of every phase, the attacker's
rate, and ratios of p50s with 95% bootstrap intervals over the pooled latencies. The
attacker shares the machine's CPU with the pool, so on a small machine much of the
slowdown under attack is the flood's HTTP load on the proxy and the ingress, which the
control shows; a wrong key must cost no more than that and leave nothing behind.

Constant time. A :class:`~modelfleet.access.keys.KeyRing` of 16 keys; ``match()`` is timed
(``perf_counter_ns``, one call at a time) for wrong keys equal to a real key but for the
last character, and for wrong keys that differ from a real key in the first character,
interleaved in many batches; the median of each batch is one sample. Keys are hashed
before the comparison, so a shared prefix of the key is no shared prefix of the digest,
and the digests are compared with ``hmac.compare_digest`` against every key: the ratio
should be 1.

Ends with ``RESULT auth_p50_latency_ratio_under_bad_keys`` (p50 of right-key requests
under attack / alone), ``RESULT auth_p50_latency_ratio_after_bad_keys`` (right after an
attack / alone), ``RESULT auth_p50_ratio_bad_keys_vs_valid_flood`` (under attack / under
the control flood of valid-key requests at the same concurrency) and ``RESULT
auth_match_time_ratio_prefix_vs_random`` (median ``match()`` time of long-prefix wrong
keys / first-character wrong keys).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import socket
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import ray
from common.bootstrap import interval, ratio_interval
from common.result_lines import print_result
from ray import serve

from modelfleet.access.keys import KeyRing, digest
from modelfleet.backends.key_files import write_key_files
from modelfleet.core.workload import API_KEYS_ARG
from modelfleet.serving.app import deploy

MODEL = "mini"
POOL = "auth-bench"
RIGHT_KEY_ID = "team-a"
REPEATS = 5


@dataclass(frozen=True)
class Attack:
    """What one attack phase did: status codes of its wrong keys and when it ran
    (``time.monotonic``, which every process on the machine shares)."""

    codes: Counter[int]
    start: float
    end: float

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    @property
    def rate(self) -> float:
        return self.sent / (self.end - self.start)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def attack(url: str, count: int, threads: int, tag: str, valid_key: str | None = None) -> Attack:
    """Send ``count`` completions with wrong keys from ``threads`` threads, each with a
    kept-alive connection, as fast as the pool answers; runs in the attacker's process.
    With ``valid_key`` the flood is the control instead: the same requests with a valid
    key, for a model the pool does not serve (a 404 once the key has been checked)."""
    model = MODEL if valid_key is None else "no-such-model"
    body = {"model": model, "prompt": "hi", "max_tokens": 2}

    def worker(start: int) -> Counter[int]:
        codes: Counter[int] = Counter()
        with httpx.Client(timeout=60) as client:
            for index in range(start, count, threads):
                key = valid_key or f"sk-{tag}-guess-{index:05d}"
                headers = {"Authorization": f"Bearer {key}"}
                codes[client.post(url, json=body, headers=headers).status_code] += 1
        return codes

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        codes = sum(pool.map(worker, range(threads)), Counter[int]())
    return Attack(codes, began, time.monotonic())


def ask(client: httpx.Client, url: str, key: str, max_tokens: int) -> tuple[float, float]:
    """One right-key completion; when it was sent and answered (``time.monotonic``)."""
    body = {"model": MODEL, "prompt": "Hello, pool", "max_tokens": max_tokens, "temperature": 0}
    sent = time.monotonic()
    reply = client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    answered = time.monotonic()
    assert reply.status_code == 200, f"the right key got {reply.status_code}: {reply.text}"
    return sent, answered


def alone(client: httpx.Client, url: str, key: str, args: argparse.Namespace) -> list[float]:
    """Latencies of ``args.requests`` right-key requests with nobody else calling."""
    times = [ask(client, url, key, args.max_tokens) for _ in range(args.requests)]
    return [answered - sent for sent, answered in times]


def under_attack(
    client: httpx.Client,
    url: str,
    key: str,
    args: argparse.Namespace,
    attacker: ProcessPoolExecutor,
    tag: str,
    valid_key: str | None = None,
) -> tuple[list[float], Attack]:
    """Latencies of right-key requests sent while an attack (or the control flood) lasts
    (at most ``args.requests``), and the attack."""
    running: Future[Attack] = attacker.submit(
        attack, url, args.attack, args.threads, tag, valid_key
    )
    times: list[tuple[float, float]] = []
    while not running.done() and len(times) < args.requests:
        times.append(ask(client, url, key, args.max_tokens))
    done = running.result()
    inside = [
        answered - sent for sent, answered in times if sent >= done.start and answered <= done.end
    ]
    return inside, done


@dataclass
class Phases:
    """Right-key latencies of every repeat, pooled by phase, and the attacks."""

    alone: list[float]
    attacked: list[float]
    after: list[float]
    control: list[float]
    attacks: list[Attack]


def brute_force(args: argparse.Namespace) -> Phases:
    """Each repeat runs, in a rotated order: the right key alone; under attack, then
    right after it; and under the control flood of valid-key requests."""
    right = f"sk-{secrets.token_hex(24)}"
    other = f"sk-{secrets.token_hex(24)}"
    keys = {RIGHT_KEY_ID: right, "team-b": other}
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spawn = multiprocessing.get_context("spawn")
    phases = Phases([], [], [], [], [])
    with (
        tempfile.TemporaryDirectory() as directory,
        ProcessPoolExecutor(max_workers=1, mp_context=spawn) as attacker,
        httpx.Client(timeout=60) as client,
    ):
        write_key_files(Path(directory) / "keys", keys)
        spec = {
            "models": [{"name": MODEL, "uri": "builtin://tiny-llama-mini", "maxModelLen": 256}],
            "replicas": 1,
            "migration": {"enabled": False, "maxConcurrent": 2},
            "auth": {"mode": "ApiKey", "secretName": "keys"},
            "servingOptions": {"replicaNumCpus": 0.5},
            API_KEYS_ARG: str(Path(directory) / "keys"),
        }
        deploy(spec, name=POOL, route_prefix=f"/{POOL}")
        url = f"http://127.0.0.1:{port}/{POOL}/v1/completions"
        # Warm up the pool, the client's connection and the attacker's process.
        for _ in range(10):
            ask(client, url, right, args.max_tokens)
        warm = attacker.submit(attack, url, 20, args.threads, "warm").result()
        assert warm.codes == Counter({401: 20}), warm.codes
        order = ["alone", "attack", "control"]
        for repeat in range(args.repeats):
            for phase in order[repeat % 3 :] + order[: repeat % 3]:
                note = ""
                if phase == "alone":
                    measured = alone(client, url, right, args)
                    phases.alone += measured
                elif phase == "control":
                    measured, done = under_attack(
                        client, url, right, args, attacker, f"c{repeat}", valid_key=other
                    )
                    assert done.codes == Counter({404: args.attack}), done.codes
                    phases.control += measured
                    note = f", {done.sent} valid-key 404s at {done.rate:5.0f}/s"
                else:
                    measured, done = under_attack(client, url, right, args, attacker, f"r{repeat}")
                    assert done.codes == Counter({401: args.attack}), done.codes
                    phases.attacked += measured
                    phases.attacks.append(done)
                    after = alone(client, url, right, args)
                    phases.after += after
                    note = (
                        f", {done.sent} wrong keys at {done.rate:5.0f}/s; right after it: "
                        f"p50 {np.median(after) * 1e3:6.1f} ms"
                    )
                print(
                    f"repeat {repeat} {phase:7s}: {len(measured):3d} right-key requests, "
                    f"p50 {np.median(measured) * 1e3:6.1f} ms{note}"
                )
        serve.delete(POOL)
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
    return phases


def match_timing(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Per-batch median ``match()`` time (ns) of long-prefix and first-character wrong
    keys against a ring of ``args.ring_keys`` keys."""
    rng = np.random.default_rng(0)
    alphabet = "0123456789abcdef"
    keys = [f"sk-{secrets.token_hex(24)}" for _ in range(args.ring_keys)]
    ring = KeyRing(tuple((f"key-{i}", digest(key)) for i, key in enumerate(keys)))

    def other(char: str) -> str:
        return next(c for c in alphabet if c != char)

    prefix = [key[:-1] + other(key[-1]) for key in keys]
    first = ["x" + key[1:] for key in keys]
    assert all(ring.match(key) is None for key in prefix + first)
    samples: dict[str, list[float]] = {"prefix": [], "first": []}
    for _ in range(args.batches):
        times: dict[str, list[int]] = {"prefix": [], "first": []}
        for _ in range(args.calls):
            kinds = ("prefix", "first") if rng.random() < 0.5 else ("first", "prefix")
            for kind in kinds:
                wrong = (prefix if kind == "prefix" else first)[int(rng.integers(len(keys)))]
                began = time.perf_counter_ns()
                ring.match(wrong)
                times[kind].append(time.perf_counter_ns() - began)
        for kind, values in times.items():
            samples[kind].append(float(np.median(values)))
    return samples["prefix"], samples["first"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--requests", type=int, default=40, help="right-key requests per phase (at most)"
    )
    parser.add_argument("--attack", type=int, default=1000, help="wrong keys per attack phase")
    parser.add_argument("--threads", type=int, default=4, help="attacker threads")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per right-key request")
    parser.add_argument("--ring-keys", type=int, default=16, help="keys in the timed key ring")
    parser.add_argument("--batches", type=int, default=200, help="timed batches of match()")
    parser.add_argument("--calls", type=int, default=200, help="match() calls per kind per batch")
    args = parser.parse_args()

    prefix, first = match_timing(args)
    match_ratio, match_low, match_high = ratio_interval(prefix, first, np.median, paired=True)
    print(
        f"KeyRing of {args.ring_keys} keys, {args.batches} batches x {args.calls} calls per kind:"
        f" match() p50 {np.median(prefix) / 1e3:.2f} us (long shared prefix), "
        f"{np.median(first) / 1e3:.2f} us (first character differs); "
        f"ratio {match_ratio:.3f} [{match_low:.3f}, {match_high:.3f}]"
    )

    phases = brute_force(args)
    rates = [done.rate for done in phases.attacks]
    rate_low, rate_high = interval(rates, np.median)
    wrong = sum(done.sent for done in phases.attacks)
    print(
        f"{wrong} wrong keys in {len(phases.attacks)} attacks of {args.attack}, all answered "
        f"401, at {np.median(rates):.0f} wrong keys/s [{rate_low:.0f}, {rate_high:.0f}] "
        f"({args.threads} threads)"
    )
    for label, values in (
        ("alone", phases.alone),
        ("under attack", phases.attacked),
        ("right after it", phases.after),
        ("under valid flood", phases.control),
    ):
        p50, p99 = np.percentile(values, [50, 99])
        print(
            f"right key {label:17s}: {len(values):3d} requests, p50 {p50 * 1e3:6.1f} ms, "
            f"p99 {p99 * 1e3:6.1f} ms"
        )
    ratios = {
        "auth_p50_latency_ratio_under_bad_keys": (
            "under attack / alone",
            phases.attacked,
            phases.alone,
        ),
        "auth_p50_latency_ratio_after_bad_keys": (
            "right after / alone",
            phases.after,
            phases.alone,
        ),
        "auth_p50_ratio_bad_keys_vs_valid_flood": (
            "under attack / under the valid-key flood",
            phases.attacked,
            phases.control,
        ),
    }
    figures = {}
    for name, (label, top, bottom) in ratios.items():
        figures[name], low, high = ratio_interval(top, bottom, np.median)
        print(f"p50 {label}: {figures[name]:.3f} [{low:.3f}, {high:.3f}]")
    for name, value in figures.items():
        print_result(name, value)
    print_result("auth_match_time_ratio_prefix_vs_random", match_ratio)


if __name__ == "__main__":
    main()
