"""What an exported client adapter is: its model card and a portable reference to its base.

peft writes ``adapter_config.json`` with ``base_model_name_or_path`` set to wherever the base was
loaded from (for a packaged alias, a directory inside the virtualenv) and, in some versions, an
empty template card. :func:`describe_adapters` replaces the first with the base's public name and
writes a short ``README.md`` per client: which client, which round was selected, its test
metrics, the base model and how to load it. :func:`export_adapters` is the one export of a run's
adapters (``fellrec fit`` and a deployed client both call it): peft files, then the cards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fellrec.models.backbone import public_base_name

if TYPE_CHECKING:
    import torch

    from fellrec.models.adapters import ClientAdapters


class AdapterHolder(Protocol):
    """What :func:`export_adapters` reads of a ``FederatedModule`` (or ``ClientModule``)."""

    @property
    def adapters(self) -> ClientAdapters | None:
        """The clients' adapters (None before the model is built)."""

    @property
    def hparams(self) -> Any:
        """The module's settings (``backbone`` and ``recommender`` name the base and family)."""


#: The metrics a card lists (when the run computed them).
CARD_METRICS = ("ndcg@10", "recall@10", "hit@10", "mrr@10")


def adapter_card(
    *,
    client: int,
    num_clients: int,
    base_model: str,
    backbone_setting: str,
    strategy: str,
    recommender: str,
    selected_round: int,
    rounds_run: int,
    test_metrics: Mapping[str, Any],
    has_item_components: bool,
) -> str:
    """The ``README.md`` (Hugging Face model card) of one client's adapter.

    Args:
        client: The client the adapter belongs to.
        num_clients: Clients in the federation.
        base_model: The base's public name (the card's ``base_model``).
        backbone_setting: ``model.backbone`` as the config gave it.
        strategy: The federated strategy's name.
        recommender: ``model.recommender``.
        selected_round: The round selected on the client's validation users (-1: none).
        rounds_run: Rounds the run trained.
        test_metrics: The client's test metrics (``users`` and ``<metric>@<k>`` values).
        has_item_components: Whether ``item_components.safetensors`` lies beside the adapter.
    """
    rows = [
        f"| test {name} | {float(test_metrics[name]):.4f} |"
        for name in CARD_METRICS
        if isinstance(test_metrics.get(name), int | float)
    ]
    if "users" in test_metrics:
        rows.append(f"| test users | {int(test_metrics['users'])} |")
    selected = f"round {selected_round}" if selected_round >= 0 else "no round (never validated)"
    components = (
        "\n`item_components.safetensors` holds the client's own item and scoring modules "
        "(the layers that stay on the client); fellrec loads them with the adapter.\n"
        if has_item_components
        else ""
    )
    return f"""---
library_name: peft
base_model: {base_model}
tags:
- fellrec
- federated-learning
- recommendation
- lora
---

# fellrec adapter: client {client} of {num_clients}

The LoRA adapter of client {client} in a federated fine-tuning run of fellrec
(strategy `{strategy}`, recommender `{recommender}`), as selected on the client's own
validation users: {selected} of the {rounds_run} rounds run.

| | |
| --- | --- |
{chr(10).join(rows)}

Base model: `{base_model}` (fellrec's `model.backbone: {backbone_setting}`).
{components}
```python
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "client_{client}")
```
"""


def describe_adapters(
    directory: Path,
    *,
    backbone_setting: str,
    strategy: str,
    recommender: str,
    selected_rounds: Sequence[int],
    rounds_run: int,
    client_metrics: Mapping[str, Mapping[str, Any]],
    clients: Sequence[int] | None = None,
) -> None:
    """Write each ``client_<i>/README.md`` and point its ``adapter_config.json`` at the base.

    Args:
        directory: The ``adapters/`` directory holding ``client_<i>/``.
        backbone_setting: ``model.backbone`` as the config gave it.
        strategy: The federated strategy's name.
        recommender: ``model.recommender``.
        selected_rounds: The selected round of each client.
        rounds_run: Rounds the run trained.
        client_metrics: Test metrics per client id (``results.json``'s ``clients``).
        clients: Describe only these clients (default: every client with an adapter folder; a
            deployed client describes only its own, beside the others' in a shared directory).
    """
    base_model = public_base_name(backbone_setting)
    num_clients = len(selected_rounds)
    for client in range(num_clients) if clients is None else clients:
        folder = directory / f"client_{client}"
        config_path = folder / "adapter_config.json"
        if not config_path.is_file():
            continue
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_model
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
        card = adapter_card(
            client=client,
            num_clients=num_clients,
            base_model=base_model,
            backbone_setting=backbone_setting,
            strategy=strategy,
            recommender=recommender,
            selected_round=int(selected_rounds[client]),
            rounds_run=rounds_run,
            test_metrics=client_metrics.get(str(client), {}),
            has_item_components=(folder / "item_components.safetensors").is_file(),
        )
        (folder / "README.md").write_text(card)


def export_adapters(
    module: AdapterHolder,
    directory: Path,
    *,
    strategy: str,
    selected_rounds: Sequence[int],
    rounds_run: int,
    client_metrics: Mapping[str, Mapping[str, Any]],
    clients: Sequence[int] | None = None,
    gathered: dict[str, torch.Tensor] | None = None,
) -> bool:
    """Save ``module``'s adapters in peft format into ``directory`` and describe them.

    Each held client gets ``client_<i>/`` (its adapter, its item components when it has them),
    an ``adapter_config.json`` that names the base's public name and a ``README.md`` card
    (:func:`describe_adapters`); the base and recommender are the module's ``model.backbone``
    and ``model.recommender``.

    Args:
        module: The module holding the (selected) adapters.
        directory: The ``adapters/`` directory.
        strategy: The federated strategy's name.
        selected_rounds: The selected round of each client of the federation (-1: none).
        rounds_run: Rounds the run trained.
        client_metrics: Test metrics per client id (``results.json``'s ``clients``).
        clients: Describe only these clients (default: every client with an adapter folder).
        gathered: The adapters gathered whole on every process when the blocks are sharded
            (:meth:`~fellrec.models.adapters.ClientAdapters.gathered_state`).

    Returns:
        Whether anything was exported (False: the module has no adapters yet).
    """
    if module.adapters is None:
        return False
    module.adapters.save(directory, gathered)
    describe_adapters(
        directory,
        backbone_setting=str(module.hparams.get("backbone", "")),
        strategy=strategy,
        recommender=str(module.hparams.get("recommender", "")),
        selected_rounds=selected_rounds,
        rounds_run=rounds_run,
        client_metrics=client_metrics,
        clients=clients,
    )
    return True
