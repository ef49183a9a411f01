from __future__ import annotations

import subprocess
import sys

import httpx

from inference_worker.testing.engine_simulator import EngineSimulator


def test_it_runs_as_a_process_and_prints_its_base_url() -> None:
    command = [sys.executable, "-m", "inference_worker.testing.engine_simulator", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()

        response = httpx.get(f"{base_url}/v1/models", timeout=5)

        assert base_url.startswith("http://127.0.0.1:")
        assert response.status_code == 200
        assert response.json()["data"][0]["id"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_it_walks_through_a_flap_schedule_then_answers_normally(engine_simulator: EngineSimulator) -> None:
    engine_simulator.flap([("http_500", 2), ("http_429", 1)])
    body = {"model": "m", "prompt": "hello", "max_tokens": 16}

    statuses = [
        httpx.post(f"{engine_simulator.base_url}/v1/completions", json=body, timeout=5).status_code
        for _ in range(4)
    ]

    assert statuses == [500, 500, 429, 200]
    assert engine_simulator.flap_remaining == 0
