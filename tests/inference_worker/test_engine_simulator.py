from __future__ import annotations

import subprocess
import sys

import httpx


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
