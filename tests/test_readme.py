"""README's curl examples work as printed (only the port is changed to the test server's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.conftest import Server

README = Path(__file__).parents[1] / "README.md"


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def json_values(text: str) -> list[dict[str, object]]:
    """The JSON documents in curl's output, which puts no newline between replies."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while (pos := len(text) - len(text[pos:].lstrip())) < len(text):
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    return values


def test_every_method_has_a_curl_example() -> None:
    text = "".join(shell_blocks())
    for method in ("version", "get_compute_envs", "launch_job", "get_session", "get_job_output", "stop_job",
                   "get_users"):
        assert f"/api/{method}" in text, method


def test_curl_examples_work_as_printed(server: Server) -> None:
    blocks = [b for b in shell_blocks() if "curl" in b]
    env = {**os.environ, "TOKEN": server.token("root"), "ADMIN_TOKEN": server.token("root", "admin")}
    outputs = []
    for block in blocks:
        script = "\n".join(line for line in block.replace("127.0.0.1:8787", f"127.0.0.1:{server.port}").splitlines()
                           if not line.startswith("export "))
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True,
                                text=True, timeout=60, check=True)
        outputs.append(result.stdout)
    replies = list(json_values("".join(outputs)))
    assert not [r for r in replies if "error" in r], replies
    counted = "".join(r["output"] for r in replies if r.get("outputType") == "stdout" and r["output"][0] in "123")
    assert counted == "1\n2\n3\n"
