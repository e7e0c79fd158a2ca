"""No engine runs here to build the image, so do what the image does: take only the files the
Dockerfile copies, run its ENTRYPOINT from them (on loopback ports instead of 53 and 8053), and
ask its HEALTHCHECK and DNS whether it serves."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.support import free_port, query, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> str:
    found = [line.split(None, 1)[1] for line in DOCKERFILE.splitlines()
             if line.startswith(name + " ")]
    assert len(found) == 1, f"one {name} instruction"
    return found[0]


def _copy_image_files(target: Path) -> None:
    for line in DOCKERFILE.splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, _ = line.split()[1:]
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target / source,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, target / source)


def test_the_copied_files_serve_as_the_entrypoint_says(tmp_path: Path) -> None:
    _copy_image_files(tmp_path)
    dns_port, api_port = free_port(), free_port()
    entrypoint = json.loads(_instruction("ENTRYPOINT"))
    assert entrypoint[:2] == ["sdns", "serve"]
    args = [{"0.0.0.0:53": f"127.0.0.1:{dns_port}", "0.0.0.0:8053": f"127.0.0.1:{api_port}"}
            .get(arg, arg) for arg in entrypoint[1:]]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "sdns", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        healthcheck = shlex.split(_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
        healthcheck = [part.replace(":8053/", f":{api_port}/") for part in healthcheck]
        assert healthcheck[0] == "python3"
        healthcheck[0] = sys.executable

        def healthy() -> bool:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            return subprocess.run(healthcheck, capture_output=True, timeout=10).returncode == 0

        wait_until(healthy, timeout=15)
        reply = query(dns_port, "dns-version.cluster.local", "TXT")
        assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ['"1.1.0"']
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0
