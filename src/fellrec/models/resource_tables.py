"""Human-readable tables of the resource accounting (:mod:`fellrec.models.resources`).

Units: parameters in k/M/B, bytes in KiB/MiB/GiB, FLOPs in MFLOP..PFLOP. ``fellrec cost`` prints
:func:`format_cost_table`; the log and ``results.json`` carry the rows of :func:`report_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _units(value: float, steps: Sequence[tuple[float, str]]) -> str:
    for scale, unit in steps:
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}".rstrip()
    return f"{value:.0f}"


def human_count(value: float) -> str:
    """A parameter count in k / M / B, e.g. ``"134.52 M"``."""
    return _units(value, ((1e9, "B"), (1e6, "M"), (1e3, "k")))


def human_bytes(value: float) -> str:
    """A byte count in B / KiB / MiB / GiB, e.g. ``"1.50 GiB"``."""
    if 0 < abs(value) < 2**10:
        return f"{value:.0f} B"
    return _units(value, ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")))


def human_flops(value: float) -> str:
    """A FLOP count in MFLOP / GFLOP / TFLOP / PFLOP."""
    return _units(value, ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")))


#: Rows of a report's ``table``: label, key of each side's dict, formatter.
_REPORT_ROWS = (
    ("blocks", "blocks", str),
    ("frozen parameters", "frozen_parameters", human_count),
    ("trainable parameters", "trainable_parameters", human_count),
    ("weights", "weight_bytes", human_bytes),
    ("adapters + grads + AdamW", "optimizer_bytes", human_bytes),
    ("activations", "activation_bytes", human_bytes),
    ("memory", "memory_bytes", human_bytes),
    ("FLOPs per step", "flops_per_step", human_flops),
)


def report_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """The ``table`` of a resource report: one row per quantity, client and server side."""
    rows = [
        {
            "quantity": label,
            "client": fmt(report["client"][key]),
            "server": fmt(report["server"][key]),
        }
        for label, key, fmt in _REPORT_ROWS
    ]
    wire = report["transport"]
    sent = {
        side: human_bytes(wire[f"to_{side}_forward"] + wire[f"to_{side}_backward"])
        for side in ("server", "client")
    }
    rows.append({"quantity": "sent per step", "client": sent["server"], "server": sent["client"]})
    adapters = human_bytes(wire["adapter_bytes_per_round"])
    rows.append({"quantity": "adapter upload per round", "client": adapters, "server": "-"})
    return rows


def _format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def padding_note(batch_size: int, seq_len: int) -> str:
    """What the estimates assume about sequence lengths, printed under every cost table.

    Args:
        batch_size: Sequences per micro-batch the estimate assumes.
        seq_len: Tokens per sequence it assumes (the configured maximum).
    """
    return (
        f"estimates assume every micro-batch full ({batch_size} sequences) and padded to the "
        f"maximum length ({seq_len} tokens): memory, FLOPs and bytes sent are upper bounds. "
        "Shorter sequences and a client's last, smaller batch cost less; a run records what it "
        "sent under resources.measured.bytes_per_step in results.json."
    )


def format_report(report: dict[str, Any]) -> str:
    """The ``table`` rows of a :func:`resource_report` as aligned text (client / server)."""
    rows = [(r["quantity"], r["client"], r["server"]) for r in report["table"]]
    return _format_rows(("", "client", "server"), rows)


#: Columns of the printed cost table: header, row key, formatter.
_COST_TABLE = (
    ("client blocks", "client_blocks", str),
    ("client params", "client_parameters", human_count),
    ("client LoRA", "client_trainable", human_count),
    ("client memory", "client_memory_bytes", human_bytes),
    ("client FLOP/step", "client_flops", human_flops),
    ("client share", "client_flop_share", lambda v: f"{100 * v:.1f}%"),
    ("server params", "server_parameters", human_count),
    ("server LoRA (all)", "server_trainable", human_count),
    ("server memory", "server_memory_bytes", human_bytes),
    ("server FLOP/step", "server_flops", human_flops),
    ("sent/step", "transport_bytes", human_bytes),
)


def format_cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of :func:`cost_table` as aligned text in human units (unsplit shown as such)."""
    header = ("k_front", *(h for h, _, _ in _COST_TABLE))
    body = [
        (str(r["k_front"]) if r["split"] else "unsplit", *(f(r[k]) for _, k, f in _COST_TABLE))
        for r in rows
    ]
    return _format_rows(header, body)
