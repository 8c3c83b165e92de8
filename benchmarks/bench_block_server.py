"""Per-step cost of a block server process (``model.transport: process``) by wire, vs ``local``.

Runs the same ``fellrec fit`` job (the quickstart config: synthetic catalog, 5 clients, one round,
no validation) with the middle blocks in process and in a block server process reached over each
wire, interleaved over ``--repeats`` (every other repeat in reverse order) so machine drift hits
all alike:

- ``local``: in process (the reference);
- ``child``: the run's own block server (loopback, clear text, a one-time key);
- ``clear``: a running ``fellrec serve-blocks`` on loopback, clear text, shared key;
- ``tls``: the same over TLS (the server's certificate verified), shared key;
- ``mutual-tls``: TLS with a client certificate and no key;
- ``pickle`` (with ``--baseline-src``): the run's own block server of an older fellrec checkout
  whose wire pickled messages over ``multiprocessing.connection`` (e.g. ``git archive 8cfe2f9
  src | tar -x -C /tmp/old``).

It prints one Markdown table: median training step, the per-repeat ratios of medians against
``local`` and against ``clear``, tensor bytes per step (what the transport contract carries; equal
for all), bytes on the connection per step (forward, backward and step messages: the tensors and
control values such as the random state) and per round (the server-held LoRA rows fetched at the
round's end and loaded after the aggregation, the round start), and the fit's wall time (the
process runs' include building the middle blocks on the server; ``child`` and ``pickle`` also
starting it). Then it times the wire alone (``--round-trips``): request-answer round trips of a
forward call's size through an echo server over clear text, TLS and mutual TLS. Certificates are
made at start-up (``tests/flower_credentials.py``) and deleted with their temporary directory.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_block_server.py \\
        --backbone minilm --repeats 5 --baseline-src /tmp/old/src

All processes use the same cores: on a 2-core machine the server and the client take turns (one
waits while the other computes), so the ratio measures the messaging, not a second machine's help.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Requests a training step sends; the others happen once per round (or once per run).
STEP_REQUESTS = ("forward", "backward", "step")
LISTENING = "fellrec block server listening on "
KEY = "bench-block-server"


@dataclass
class Variant:
    """One way of running the middle blocks: fit arguments, environment, its server's flags."""

    name: str
    fit_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    server_flags: list[str] | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    #: Sources that go first on the run's path (an older checkout: the pickle baseline).
    source: Path | None = None
    address: str = ""


def without_key(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the shared key: each variant sets its own."""
    return {k: v for k, v in env.items() if k != "FELLREC_SERVER_KEY"}


def start_server(variant: Variant, threads: int, directory: Path) -> subprocess.Popen[str]:
    """``fellrec serve-blocks`` for ``variant`` on a free loopback port (sets its address)."""
    assert variant.server_flags is not None
    env = {**without_key(dict(os.environ)), **variant.server_env}
    command = [sys.executable, "-m", "fellrec", "serve-blocks", "--address", "127.0.0.1:0"]
    server = subprocess.Popen(
        [*command, "--threads", str(threads), *variant.server_flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(directory / f"{variant.name}.log", "w"),  # noqa: SIM115 - lives with it
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith(LISTENING):
        raise SystemExit(f"serve-blocks for {variant.name} did not start: {line!r}")
    variant.address = line.removeprefix(LISTENING).strip()
    return server


def variants(args: argparse.Namespace, credentials: Path) -> list[Variant]:
    """The wires to compare (certificates made in ``credentials``)."""
    sys.path.insert(0, str(REPO / "tests"))
    from flower_credentials import make_client_certificate, make_tls

    tls = make_tls(credentials / "ca")
    client_cert, client_key = make_client_certificate(tls, credentials / "clients", "run")
    server_tls = ["--tls-cert", str(tls.certificate), "--tls-key", str(tls.key)]
    ca = ["--model.block_server.tls.ca", str(tls.ca)]
    keyed = {"FELLREC_SERVER_KEY": KEY}
    process = ["--model.transport", "process"]
    chosen = [
        Variant("local", ["--model.transport", "local"]),
        Variant("child", process),
        Variant("clear", process, keyed, [], keyed),
        Variant("tls", [*process, *ca], keyed, server_tls, keyed),
        Variant(
            "mutual-tls",
            [
                *(*process, *ca),
                *("--model.block_server.tls.certificate", str(client_cert)),
                *("--model.block_server.tls.key", str(client_key)),
            ],
            {},
            [*server_tls, "--tls-client-ca", str(tls.ca)],
        ),
    ]
    if args.baseline_src is not None:
        chosen.append(Variant("pickle", process, source=args.baseline_src.resolve()))
    return chosen


def run(variant: Variant, args: argparse.Namespace, directory: Path) -> dict:
    """One ``fellrec fit`` over ``variant``; the probe's record and the wall time."""
    probe = directory / "probe"
    callback = json.dumps(
        [
            {
                "class_path": "block_server_probe.BlockServerProbe",
                "init_args": {"directory": str(probe)},
            }
        ]
    )
    address = ["--model.block_server.address", variant.address] if variant.address else []
    command = [
        sys.executable,
        "-m",
        "fellrec",
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--model.backbone",
        args.backbone,
        *variant.fit_args,
        *address,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(directory / "run"),
        "--data.max_train_examples",
        str(args.examples),
        "--data.batch_size",
        str(args.batch_size),
        "--data.cache_dir",
        str(args.cache_dir),
        "--trainer.callbacks+",
        callback,
    ]
    env = {**without_key(dict(os.environ)), **variant.env}
    # An older checkout's sources go first (the pickle baseline); the probe is this checkout's.
    path = [str(variant.source)] if variant.source is not None else []
    path += [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{variant.name} failed:\n{result.stderr[-4000:]}")
    record: dict = json.loads((probe / "probe.json").read_text())
    record["fit_seconds"] = seconds
    return record


def median_step(record: dict) -> float:
    """The median training step of a run (its first step warms up and is left out)."""
    return statistics.median(record["step_seconds"][1:])


def time_round_trips(credentials: Path, message_bytes: int, count: int) -> dict[str, float]:
    """Median seconds of one request-answer round trip on a stream, per wire, no model.

    Each way carries a ``message_bytes`` float32 tensor encoded as the block server's messages
    are, through the same gRPC stream code (an echo server in this process).
    """
    import torch

    from fellrec.wire import peers, rpc
    from fellrec.wire.codec import encode
    from fellrec.wire.security import ServerTls, TlsSettings
    from flower_credentials import make_client_certificate, make_tls

    tls = make_tls(credentials / "echo-ca")
    cert, key = make_client_certificate(tls, credentials / "echo-clients", "run")

    def echo(requests, context):
        for request in requests:
            yield rpc.answer_to(request, lambda value: value, "echo")

    wires = {
        "clear": (None, TlsSettings(), b"k"),
        "tls": (ServerTls(str(tls.certificate), str(tls.key)), TlsSettings(ca=str(tls.ca)), b"k"),
        "mutual-tls": (
            ServerTls(str(tls.certificate), str(tls.key), str(tls.ca)),
            TlsSettings(ca=str(tls.ca), certificate=str(cert), key=str(key)),
            None,
        ),
    }
    message = encode({"hidden": torch.randn(message_bytes // 4)})
    medians = {}
    for name, (server_tls, caller_tls, shared) in wires.items():
        running = rpc.start_server(
            "127.0.0.1:0", "bench.Echo", streams={"S": echo}, tls=server_tls, key=shared
        )
        peer = peers.Peer("echo", running.address, "", caller_tls, "", shared, "", "")
        stream = peers.StreamCall(peer.channel(), "/bench.Echo/S", peer.metadata)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            stream.ask(message, 30)
            times.append(time.perf_counter() - started)
        stream.close()
        running.stop()
        medians[name] = statistics.median(times[10:])
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--examples", type=int, default=320, help="training examples (all clients)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="micro-batch (the figures in benchmarks/README.md: 16, the quickstart's until "
        "2026-12-07; many small steps weigh the wire's per-message cost)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="src/ of an older fellrec whose block server pickled messages (adds 'pickle')",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "fellrec-bench-cache"
    )
    parser.add_argument(
        "--round-trips",
        type=int,
        default=300,
        help="round trips of a step-sized message per wire, timed alone (0: none)",
    )
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        chosen = variants(args, work / "credentials")
        servers = [
            start_server(v, torch.get_num_threads(), work)
            for v in chosen
            if v.server_flags is not None
        ]
        records: dict[str, list[dict]] = {v.name: [] for v in chosen}
        try:
            for repeat in range(args.repeats):
                # Every other repeat in reverse order: drift within a repeat evens out.
                for variant in chosen if repeat % 2 == 0 else chosen[::-1]:
                    with tempfile.TemporaryDirectory() as tmp:
                        records[variant.name].append(run(variant, args, Path(tmp)))
                    print(f"repeat {repeat}: {variant.name} done", file=sys.stderr)
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
        print_table(args, records)
        if args.round_trips > 0:
            # A quarter of a step's connection bytes each way: one forward or backward call
            # (a step makes one of each, and a small step request).
            record = records["clear"][-1]
            stepping = sum(v for k, v in record["wire_bytes"].items() if k in STEP_REQUESTS)
            size = stepping // len(record["step_seconds"]) // 4
            medians = time_round_trips(work / "credentials", size, args.round_trips)
            print(
                f"\nthe wire alone, one round trip of {size / 1024:.0f} KiB each way "
                f"(median of {args.round_trips}): "
                + ", ".join(f"{name} {value * 1000:.2f} ms" for name, value in medians.items())
            )


def print_table(args: argparse.Namespace, records: dict[str, list[dict]]) -> None:
    """The Markdown table of every variant, and TLS's ratio to clear text per repeat."""

    def ratios(name: str, reference: str) -> list[float]:
        pairs = zip(records[reference], records[name], strict=True)
        return [median_step(b) / median_step(a) for a, b in pairs]

    print(f"backbone {args.backbone}, {args.examples} examples, {args.repeats} repeats\n")
    print(
        "| wire | median step (s) | / local per repeat | / clear per repeat "
        "| tensor bytes per step | connection bytes per step | connection bytes per round "
        "| fit wall time (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in records.items():
        steps = [median_step(r) for r in runs]
        count = len(runs[-1]["step_seconds"])
        wire = runs[-1]["wire_bytes"]
        per_step = per_round = "-"
        if wire is not None:
            stepping = sum(v for k, v in wire.items() if k in STEP_REQUESTS)
            per_step = f"{stepping / count / 1024:.0f} KiB"
            per_round = f"{(sum(wire.values()) - stepping) / 1024:.0f} KiB"  # one round
        to_local = "-" if name == "local" else ", ".join(f"{r:.2f}" for r in ratios(name, "local"))
        to_clear = (
            "-"
            if name in ("local", "clear") or "clear" not in records
            else ", ".join(f"{r:.2f}" for r in ratios(name, "clear"))
        )
        print(
            f"| {name} | {statistics.median(steps):.3f} "
            f"(min {min(steps):.3f}, max {max(steps):.3f})"
            f" | {to_local} | {to_clear}"
            f" | {runs[-1]['tensor_bytes'] / count / 1024:.0f} KiB"
            f" | {per_step} | {per_round}"
            f" | {statistics.median(r['fit_seconds'] for r in runs):.1f} |"
        )
    for name, reference in [("tls", "clear"), ("mutual-tls", "clear"), ("tls", "pickle")]:
        if name in records and reference in records:
            values = ratios(name, reference)
            print(
                f"\n{name} / {reference}, median step per repeat: "
                f"{', '.join(f'{r:.3f}' for r in values)} (median {statistics.median(values):.3f})"
            )


if __name__ == "__main__":
    main()
