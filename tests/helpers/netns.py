"""Network namespaces the tests create, to play a container whose resolver is sdns."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.support import SDNS

Api = Callable[..., str]


def missing_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip is not installed (make test installs iproute2)"
    probe = f"sdns-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


class Netns:
    """A namespace with only a loopback interface, and its own /etc/resolv.conf."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.etc = Path("/etc/netns") / name
        self.processes: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def write_resolv_conf(self, text: str) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(text)

    def run(self, *command: str, timeout: float = 20) -> str:
        result = subprocess.run(["ip", "netns", "exec", self.name, *command],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): "
                                 f"{result.stdout}{result.stderr}")
        return result.stdout

    def start(self, *command: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(["ip", "netns", "exec", self.name, *command],
                                       stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_sdns(self, *args: str, log: Path) -> Api:
        """sdns serving DNS on 127.0.0.1:53 and its API on :8053 inside the namespace; returns
        ``api(method, path, body="{}")``, which calls that API from inside and answers the
        body, once it is up."""

        self.start(SDNS, "serve", "--dns-addr", "127.0.0.1:53", "--api-addr", "127.0.0.1:8053",
                   *args, log=log)

        def api(method: str, path: str, body: str = "{}") -> str:
            return self.run("curl", "-sf", "-X", method, "-d", body,
                            f"http://127.0.0.1:8053{path}")

        deadline = time.monotonic() + 15
        while True:
            try:
                api("GET", "/healthz")
                return api
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
