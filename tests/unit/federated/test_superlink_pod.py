"""The SuperLink pod's publishing of status and its adoption of the job's settings."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelfleet.federated.checkpoint import RunResult, write_result
from modelfleet.federated.job import JOB_FILE
from modelfleet.federated.processes import pick_free_ports
from modelfleet.federated.superlink_pod import (
    STATUS_KEY,
    ConfigMapTarget,
    Publisher,
    adopt_job,
)


class ApiServer(ThreadingHTTPServer):
    """Records the PATCH requests a ConfigMap receives."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, object]]] = []
        super().__init__(("127.0.0.1", 0), Recorder)


class Recorder(BaseHTTPRequestHandler):
    server: ApiServer

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.patches.append((self.path, self.headers["Authorization"], body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        """Quiet."""


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def target(tmp_path: Path, port: int) -> ConfigMapTarget:
    token = tmp_path / "token"
    token.write_text("the-token\n")
    return ConfigMapTarget(f"http://127.0.0.1:{port}", "research", "job-fed-status", token, None)


def test_a_silent_api_server_costs_a_retry_not_the_run(tmp_path: Path, api: ApiServer) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = Publisher(target(tmp_path, pick_free_ports(1)[0]), run_dir, "pvc://runs/job")
    dead()  # nothing listens: no exception, nothing marked published
    assert dead.published == ""

    live = Publisher(target(tmp_path, api.server_address[1]), run_dir, "pvc://runs/job")
    live()
    live()  # unchanged: not sent again
    write_result(run_dir, RunResult("Succeeded", "RoundsCompleted", "completed 1 round(s)"))
    live()
    paths = {path for path, _, _ in api.patches}
    assert paths == {"/api/v1/namespaces/research/configmaps/job-fed-status"}
    assert {authorization for _, authorization, _ in api.patches} == {"Bearer the-token"}
    documents = [json.loads(body["data"][STATUS_KEY]) for _, _, body in api.patches]  # type: ignore[index]
    assert documents == [
        {"report": {"round": 0}, "result": None},
        {
            "report": {"round": 0},
            "result": {
                "phase": "Succeeded",
                "reason": "RoundsCompleted",
                "message": "completed 1 round(s)",
            },
        },
    ]


def test_a_started_run_keeps_the_settings_it_started_with(tmp_path: Path) -> None:
    run_dir, given = tmp_path / "run", tmp_path / "job.json"
    given.write_text('{"rounds": 3}')
    adopt_job(run_dir, given)
    given.write_text('{"rounds": 9}')
    adopt_job(run_dir, given)
    assert json.loads((run_dir / JOB_FILE).read_text()) == {"rounds": 3}
    assert [p.name for p in run_dir.iterdir()] == [JOB_FILE], "no partial file left behind"
