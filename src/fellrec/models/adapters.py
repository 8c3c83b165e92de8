"""One frozen backbone, one LoRA adapter per client, through peft's multi-adapter API.

The base weights exist once in memory; each client owns only its adapter, optionally a small module
of its own (per-item components: :mod:`fellrec.models.item_components`) and, in the Lightning layer,
its optimizer state. A client's parameters are exchanged as one flat vector in one fixed key order
(adapter keys, then ``items.<name>`` keys) so the pure aggregation functions can stack clients
into an ``(N, P)`` matrix.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from fellrec.models.cpu_dropout import cheap_dropout_masks
from fellrec.models.sharding import copy_into, full_tensor, is_sharded


@dataclass
class LoRASettings:
    """LoRA hyper-parameters (peft), the same for every client."""

    r: int = 8
    """Rank of the low-rank update."""
    alpha: int = 16
    """Scaling numerator (peft's ``lora_alpha``)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Names of the linear layers to adapt; None takes peft's default for the architecture
    (BERT: query, value; LLaMA/Qwen2/Mistral: q_proj, v_proj), as FELLRec's reference does, or
    fellrec's where peft has none (Phi-3: qkv_proj; DistilBERT: q_lin, v_lin; ModernBERT: Wqkv)."""

    def to_peft(self, model_type: str | None = None) -> LoraConfig:
        """Return the equivalent peft ``LoraConfig``.

        Args:
            model_type: The backbone's ``config.model_type``: without ``target_modules``, the
                targets are :func:`default_lora_targets` of it (peft's default when it has one).
        """
        if self.r < 1:
            raise ValueError(f"model.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=(
                list(self.target_modules)
                if self.target_modules
                else default_lora_targets(model_type)
            ),
        )


#: LoRA targets for model types peft has no default for (attention query and value, as peft's
#: defaults are elsewhere; Phi-3 and ModernBERT fuse them into one projection).
EXTRA_DEFAULT_TARGETS: dict[str, list[str]] = {
    "phi3": ["qkv_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "modernbert": ["Wqkv"],
}


def default_lora_targets(model_type: str | None) -> list[str] | None:
    """The modules LoRA adapts when ``model.lora.target_modules`` is not set.

    peft's default for the model type, else :data:`EXTRA_DEFAULT_TARGETS`; ``None`` leaves the
    choice to peft (which refuses a model type it has no default for, naming the setting).
    """
    if model_type is None:
        return None
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    targets = PEFT_DEFAULTS.get(model_type) or EXTRA_DEFAULT_TARGETS.get(model_type)
    return list(targets) if targets else None


def adapter_name(client: int) -> str:
    """Return the peft adapter name of a client."""
    return f"client_{client}"


#: Key prefix of a client module's parameters in the exchanged vector and in exports.
CLIENT_MODULE_PREFIX = "items."
#: File a client module's parameters are exported to, next to the peft adapter.
CLIENT_MODULE_FILE = "item_components.safetensors"


class ClientAdapters:
    """Per-client LoRA adapters on one shared, frozen backbone.

    All clients start from the same initialisation (client 0's, broadcast), so the federation starts
    from one common point as in FedAvg.

    Args:
        backbone: A Hugging Face model; its weights are frozen.
        lora: LoRA settings.
        num_clients: Number of adapters (slots) to create.
        client_ids: The client each slot belongs to (default ``0..num_clients-1``); names the
            peft adapters ``client_<id>``.
        client_modules: Optionally one module per slot (all of the same structure) whose
            parameters belong to that client too, e.g. per-item components. They are exchanged,
            aggregated and initialised like the adapter (slot 0's values broadcast). The caller
            registers them where Lightning checkpoints them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        lora: LoRASettings,
        num_clients: int,
        client_ids: list[int] | None = None,
        client_modules: Sequence[nn.Module] | None = None,
    ) -> None:
        if num_clients < 1:
            raise ValueError(f"need at least one client, got {num_clients}")
        self.client_ids = list(range(num_clients)) if client_ids is None else list(client_ids)
        if len(self.client_ids) != num_clients:
            raise ValueError(f"{len(self.client_ids)} client ids for {num_clients} adapters")
        if client_modules is not None and len(client_modules) != num_clients:
            raise ValueError(f"{len(client_modules)} client modules for {num_clients} adapters")
        self.client_modules = list(client_modules) if client_modules is not None else None
        self.names = [adapter_name(c) for c in self.client_ids]
        config = lora.to_peft(getattr(getattr(backbone, "config", None), "model_type", None))
        with warnings.catch_warnings():
            # peft still calls a transformers helper deprecated in v5; nothing for users to do.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            try:
                self.model: PeftModel = get_peft_model(backbone, config, adapter_name=self.names[0])
            except ValueError as error:
                raise ValueError(
                    f"model.lora.target_modules={lora.target_modules} do not match the "
                    f"backbone's layers: {error}"
                ) from error
            for name in self.names[1:]:
                self.model.add_adapter(name, config)
        cheap_dropout_masks(self.model)  # LoRA's input dropouts, as the base's (cpu_dropout)
        # from_pretrained returns eval mode; training needs dropout (Lightning keeps modes as is).
        self.model.train()
        self.num_clients = num_clients
        self._params: list[list[nn.Parameter]] = []
        self.keys: list[str] = []
        #: Each slot's adapter parameters by their peft name (what ``save_pretrained`` writes).
        self._peft_names: list[dict[str, nn.Parameter]] = []
        self.collect_parameters()
        initial = self.get_vector(0)
        for client in range(1, num_clients):
            self.set_vector(client, initial)
        self.activate(0)

    def collect_parameters(self) -> None:
        """Find every slot's parameters in the model, in the fixed key order.

        Called again after something replaced the model's parameter objects (sharding does).
        """
        self._params, self._peft_names = [], []
        for client, name in enumerate(self.names):
            tag = f".{name}."
            peft_named = {key: p for key, p in self.model.named_parameters() if tag in key}
            self._peft_names.append(peft_named)
            named = sorted((key.replace(tag, "."), param) for key, param in peft_named.items())
            if self.client_modules is not None:
                named += [
                    (CLIENT_MODULE_PREFIX + key, param)
                    for key, param in self.client_modules[client].named_parameters()
                ]
            if client == 0:
                self.keys = [key for key, _ in named]
            self._params.append([param for _, param in named])

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of one client (adapter and client module)."""
        return sum(p.numel() for p in self._params[0])

    @property
    def num_module_parameters(self) -> int:
        """Trainable parameters of one client's module (0 without client modules)."""
        return sum(
            p.numel()
            for key, p in zip(self.keys, self._params[0], strict=True)
            if key.startswith(CLIENT_MODULE_PREFIX)
        )

    def module(self, client: int) -> nn.Module:
        """Slot ``client``'s own module.

        Raises:
            ValueError: If the adapters were built without client modules.
        """
        if self.client_modules is None:
            raise ValueError("these adapters have no client modules")
        return self.client_modules[client]

    def active_module(self) -> nn.Module:
        """The module of the slot whose adapter is active."""
        return self.module(self.names.index(str(self.model.active_adapter)))

    def active_client(self) -> int:
        """The client whose adapter is active."""
        return self.client_ids[self.names.index(str(self.model.active_adapter))]

    def parameters(self, client: int) -> list[nn.Parameter]:
        """Return a client's adapter parameters in the fixed key order."""
        return self._params[client]

    def activate(self, client: int) -> None:
        """Route forward passes through slot ``client``'s adapter (only it requires grad).

        Client modules follow the adapter: only the active slot's module requires grad, so the
        trainable set is one client's parameters at a time (DDP's reducer, which registers the
        parameters that require grad, then sees every one of them used in each step).
        """
        if self.model.active_adapter != self.names[client]:
            self.model.set_adapter(self.names[client])
        if self.client_modules is not None:
            for slot, module in enumerate(self.client_modules):
                module.requires_grad_(slot == client)

    @contextlib.contextmanager
    def all_trainable(self) -> Iterator[None]:
        """Every slot's parameters require grad inside (then only the active slot's again)."""
        active = self.names.index(str(self.model.active_adapter))
        try:
            for params in self._params:
                for param in params:
                    param.requires_grad_(True)
            yield
        finally:
            for params in self._params:
                for param in params:
                    param.requires_grad_(False)
            self.model.set_adapter(self.names[active])
            self.activate(active)

    def get_vector(self, client: int) -> torch.Tensor:
        """Return a client's adapter as one flat float32 CPU vector ``(P,)`` (a copy).

        Aggregation runs on the CPU: it is one Gram matrix and one matmul, and keeping N copies
        of the adapters off the accelerator leaves its memory to the model. Sharded parameters
        are gathered whole: with sharded blocks every process must call this at once.
        """
        return torch.cat(
            [full_tensor(p.detach()).reshape(-1).float().cpu() for p in self._params[client]]
        )

    def get_matrix(self) -> torch.Tensor:
        """Return all clients' adapters stacked ``(N, P)`` (float32, CPU)."""
        return torch.stack([self.get_vector(c) for c in range(self.num_clients)])

    @torch.no_grad()
    def set_vector(self, client: int, vector: torch.Tensor) -> None:
        """Overwrite a client's adapter from a flat vector ``(P,)``."""
        if vector.numel() != self.num_parameters:
            raise ValueError(
                f"adapter vector has {vector.numel()} values, expected {self.num_parameters}"
            )
        offset = 0
        for param in self._params[client]:
            size = param.numel()
            copy_into(param, vector[offset : offset + size].view(param.shape))  # casts dtype
            offset += size

    def set_matrix(self, matrix: torch.Tensor) -> None:
        """Overwrite every client's adapter from an ``(N, P)`` matrix."""
        for client in range(self.num_clients):
            self.set_vector(client, matrix[client])

    def state_dict(self, client: int) -> dict[str, torch.Tensor]:
        """Return a client's parameters as ``{key: tensor}`` with the adapter name removed."""
        return {
            k: full_tensor(p.detach()).clone()
            for k, p in zip(self.keys, self._params[client], strict=True)
        }

    @property
    def sharded(self) -> bool:
        """Whether some adapter parameters are sharded across processes."""
        return any(is_sharded(p) for p in self._params[0])

    def gathered_state(self) -> dict[str, torch.Tensor] | None:
        """Every slot's adapter, whole, by peft name, for :meth:`save` (``None`` if not sharded).

        A collective when sharded: every process calls it, one of them saves.
        """
        if not self.sharded:
            return None
        return {
            key: full_tensor(p.detach()).cpu()
            for named in self._peft_names
            for key, p in named.items()
        }

    def save(self, directory: str | Path, gathered: dict[str, torch.Tensor] | None = None) -> None:
        """Export every client into ``<directory>/client_<id>/``.

        The adapter in peft format, plus the client module's parameters (when there is one) as
        ``item_components.safetensors`` beside it.

        Args:
            directory: Where the ``client_<id>`` folders go.
            gathered: :meth:`gathered_state`, taken on every process, when the adapters are
                sharded (one process cannot gather them alone).
        """
        from safetensors.torch import save_file  # a transformers dependency

        if self.sharded and gathered is None:
            raise ValueError("sharded adapters save from gathered_state(), taken on every rank")
        extra: dict[str, Any] = {"state_dict": gathered} if gathered is not None else {}
        self.model.save_pretrained(str(directory), selected_adapters=self.names, **extra)
        if self.client_modules is None:
            return
        for module, name in zip(self.client_modules, self.names, strict=True):
            # Client modules are never sharded: this process holds them whole.
            tensors = {key: p.detach().contiguous() for key, p in module.named_parameters()}
            save_file(tensors, str(Path(directory) / name / CLIENT_MODULE_FILE))
