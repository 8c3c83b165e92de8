"""A real Flower deployment on loopback for the tests: a SuperLink and SuperNodes as processes.

Each process gets its own process group and the deployment its own ``FLWR_HOME``; stopping sends
SIGTERM to every group (SuperNodes first) and kills whatever descendant is left, so a test leaves
no stray process behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil

from flower_credentials import TlsFiles

#: flower-superlink, flower-supernode, flwr: the helper processes they start are found by name.
BIN = Path(sys.executable).parent
CONNECTION = "fellrec-test"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Deployment:
    """SuperLink + SuperNodes on 127.0.0.1, driven through the ``flwr`` command.

    Without ``tls`` every connection is plaintext (``--insecure``); with it the SuperLink serves
    its Fleet and Control APIs over TLS and SuperNodes and ``flwr`` verify it against the CA.
    ``node_auth`` (needs ``tls``) starts the SuperLink with ``--enable-supernode-auth``: only
    SuperNodes whose public key was registered (:meth:`register_node`) may connect.
    """

    def __init__(
        self, directory: Path, tls: TlsFiles | None = None, node_auth: bool = False
    ) -> None:
        if node_auth and tls is None:
            raise ValueError("SuperNode authentication needs TLS")
        self.tls = tls
        self.node_auth = node_auth
        self.directory = directory
        self.logs = directory / "logs"
        self.home = directory / "flwr-home"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "FELLREC_WORKER_KEY": "fellrec-test-key",
        }
        self.port = 0
        self.processes: list[subprocess.Popen] = []
        self.nodes: dict[int, subprocess.Popen] = {}
        self.workers: dict[int, str] = {}
        self.descendants: set[int] = set()

    def _spawn(
        self,
        name: str,
        argv: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Start ``argv`` in its own process group, logging to ``logs/<name>.log``.

        Args:
            cwd: Its working directory (default: this process's).
            env: Variables set on top of the deployment's environment.
        """
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                env={**self.env, **(env or {})},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_superlink(self, timeout: float = 60.0, cwd: Path | None = None) -> None:
        """The SuperLink; the ServerApp it starts runs in ``cwd`` (relative config paths)."""
        self.port = free_port()
        if self.tls is None:
            security = ["--insecure"]
        else:
            security = ["--ssl-ca-certfile", str(self.tls.ca)]
            security += ["--ssl-certfile", str(self.tls.certificate)]
            security += ["--ssl-keyfile", str(self.tls.key)]
            if self.node_auth:
                security.append("--enable-supernode-auth")
        superlink = self._spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *security,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            cwd=cwd,
        )
        scheme, context = "http", None
        if self.tls is not None:
            scheme, context = "https", ssl.create_default_context(cafile=str(self.tls.ca))
        deadline = time.monotonic() + timeout
        while True:
            if superlink.poll() is not None:
                raise RuntimeError(f"the SuperLink exited: {self.log('superlink')}")
            try:
                health = f"{scheme}://127.0.0.1:{self.port}/health"
                with urllib.request.urlopen(health, timeout=1, context=context):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the SuperLink did not come up") from None
                time.sleep(0.2)
        trust = "insecure = true" if self.tls is None else f'root-certificates = "{self.tls.ca}"'
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{trust}\n'
        )

    def register_node(self, public_key: Path) -> None:
        """``flwr supernode register``: admit the SuperNode holding ``public_key``'s private key."""
        done = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed: {done.stdout}{done.stderr}")

    def start_worker(
        self,
        partition: int,
        timeout: float = 60.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """A fellrec client worker for ``partition``'s SuperNode; its address.

        Args:
            cwd: Its working directory: where it resolves relative data and config paths.
            env: More environment variables (e.g. its own ``FELLREC_CACHE``).
        """
        address = f"127.0.0.1:{free_port()}"
        name = f"worker-{partition}"
        worker = self._spawn(
            name,
            [sys.executable, "-m", "fellrec.deploy.client_worker", "--address", address],
            cwd=cwd,
            env=env,
        )
        self.wait_for_log(name, "listening", timeout, worker)
        self.workers[partition] = address
        return address

    def start_supernode(
        self,
        partition: int,
        partitions: int,
        private_key: Path | None = None,
        name: str | None = None,
        silo: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """A SuperNode for ``partition``; ``private_key`` authenticates it (``node_auth``).

        Args:
            name: Its log's name (default ``supernode-<partition>``).
            silo: Its own data (node config ``fellrec-silo``).
            cwd: Its working directory (its ClientApps run there).
            env: More environment variables.
        """
        node_config = f"partition-id={partition} num-partitions={partitions}"
        if partition in self.workers:
            node_config += f" fellrec-worker='{self.workers[partition]}'"
        if silo is not None:
            node_config += f" fellrec-silo='{silo}'"
        security = ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca)]
        if private_key is not None:
            security += ["--auth-supernode-private-key", str(private_key)]
        node = self._spawn(
            name or f"supernode-{partition}",
            [
                str(BIN / "flower-supernode"),
                *security,
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                node_config,
            ],
            cwd=cwd,
            env=env,
        )
        if name is None:
            self.nodes[partition] = node
        return node

    def stop_supernode(self, partition: int) -> None:
        """SIGTERM a SuperNode's process group (it and the ClientApp it runs), as a node stops."""
        node = self.nodes.pop(partition)
        self._remember_descendants()
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(30)

    def wait_for_log(
        self, name: str, text: str, timeout: float, process: subprocess.Popen | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        path = self.logs / f"{name}.log"
        while text not in path.read_text(errors="replace"):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in {name}'s log: {self.log(name)}")
            time.sleep(0.1)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            listed = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
            nodes = json.loads(listed.stdout or "{}").get("nodes", [])
            if sum(node["status"] == "online" for node in nodes) >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"SuperNodes not online: {listed.stdout}{listed.stderr}")
            time.sleep(0.5)

    def _run_arguments(self, app: Path, config: dict[str, Any]) -> list[str]:
        lines = [f"{key} = {json.dumps(value)}" for key, value in config.items()]
        overrides = self.directory / "run-config.toml"
        overrides.write_text("\n".join(lines) + "\n")
        return ["run", str(app), CONNECTION, "--stream", "--run-config", str(overrides)]

    def start_run(self, app: Path, config: dict[str, Any]) -> subprocess.Popen:
        """``flwr run`` in the background; its streamed output goes to the ``run`` log."""
        return self._spawn("run", [str(BIN / "flwr"), *self._run_arguments(app, config)])

    def run(self, app: Path, config: dict[str, Any], timeout: float = 600) -> tuple[int, str]:
        """``flwr run`` with ``config`` overrides; the run id and its streamed output."""
        done = self.flwr(*self._run_arguments(app, config), timeout=timeout)
        output = done.stdout + done.stderr
        if done.returncode != 0 or "Successfully started run " not in output:
            raise RuntimeError(f"flwr run failed ({done.returncode}):\n{output}")
        return int(output.split("Successfully started run ")[1].split()[0]), output

    def status(self, run_id: int) -> dict[str, Any]:
        listed = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        return dict(json.loads(listed.stdout)["runs"][0])

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def _remember_descendants(self) -> None:
        for process in self.processes:
            try:
                children = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            self.descendants.update(child.pid for child in children)

    def stop(self) -> None:
        self._remember_descendants()
        for process in [*self.nodes.values(), *self.processes]:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(10)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.2)
        for pid in self.alive():
            psutil.Process(pid).kill()

    def alive(self) -> list[int]:
        """Processes of this deployment still running (not zombies)."""
        pids = {p.pid for p in self.processes} | self.descendants
        running = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    running.append(pid)
            except psutil.NoSuchProcess:
                continue
        return running

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
