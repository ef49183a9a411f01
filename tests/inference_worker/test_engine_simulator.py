from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from inference_worker.testing.engine_simulator import EngineSimulator


@pytest.mark.slow  # a child process
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


def test_its_hostile_modes_misbehave_as_named(engine_simulator: EngineSimulator) -> None:
    body = {"model": "m", "prompt": "hello", "max_tokens": 16}
    url = f"{engine_simulator.base_url}/v1/completions"
    engine_simulator.oversized_bytes = 3_000_000
    engine_simulator.panic_run_chars = 50_000
    engine_simulator.trickle_interval = 2.0  # longer than the read timeout below

    engine_simulator.mode = "oversized"
    junk = httpx.post(url, json=body, timeout=5)
    engine_simulator.mode = "oversized_json"
    huge = httpx.post(url, json=body, timeout=5).json()["choices"][0]
    engine_simulator.mode = "panic"
    run = httpx.post(url, json=body, timeout=5).json()["choices"][0]
    for mode in ("hang", "trickle"):
        engine_simulator.mode = mode
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=0.5)

    assert len(junk.content) == 3_000_000
    assert "token_ids" not in huge and "a" * 3_000_000 in huge["text"]
    assert "a" * 50_000 in run["text"] and "a" * 50_001 not in run["text"]
    assert run["text"].endswith('"rationale": "Simulated verdict."}')
