"""Subcommands of ``fellrec`` beyond LightningCLI's fit/validate/test.

Each module exposes ``main(args: list[str]) -> None`` and is imported only when its command runs,
so ``fellrec --help`` stays fast.
"""

#: ``fellrec <name>`` -> module under ``fellrec.commands`` and its one-line summary.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("fellrec.commands.data", "data stats|fetch|export-silos: the data, MovieLens, silos"),
    "cost": ("fellrec.commands.cost", "client/server parameters, memory, FLOPs, bytes per k_front"),
    "attack": ("fellrec.commands.attack", "token-recovery attack on the hidden states per k_front"),
    "report": ("fellrec.commands.report", "Markdown + HTML report comparing run directories"),
    "compare": ("fellrec.commands.compare", "run several strategies on the same data, then report"),
    "baselines": ("fellrec.commands.baselines", "BPR-MF and SASRec on the same data and clients"),
    "serve-blocks": (
        "fellrec.serving.block_server",
        "host split models' middle blocks for runs with model.transport: process",
    ),
}
