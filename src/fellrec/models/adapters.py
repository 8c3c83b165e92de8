"""One frozen backbone, one LoRA adapter per client, through peft's multi-adapter API.

The base weights exist once in memory; each client owns only its adapter, optionally a small module
of its own (per-item components: :mod:`fellrec.models.item_components`) and, in the Lightning layer,
its optimizer state. A client's parameters are exchanged as one flat vector in one fixed key order
(adapter keys, then ``items.<name>`` keys) so the pure aggregation functions can stack clients
into an ``(N, P)`` matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


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
        # from_pretrained returns eval mode; training needs dropout (Lightning keeps modes as is).
        self.model.train()
        self.num_clients = num_clients
        self._params: list[list[nn.Parameter]] = []
        self.keys: list[str] = []
        for client, name in enumerate(self.names):
            tag = f".{name}."
            named = sorted(
                (name.replace(tag, "."), param)
                for name, param in self.model.named_parameters()
                if tag in name
            )
            if self.client_modules is not None:
                named += [
                    (CLIENT_MODULE_PREFIX + key, param)
                    for key, param in self.client_modules[client].named_parameters()
                ]
            if client == 0:
                self.keys = [name for name, _ in named]
            self._params.append([param for _, param in named])
        initial = self.get_vector(0)
        for client in range(1, num_clients):
            self.set_vector(client, initial)
        self.activate(0)

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

    def get_vector(self, client: int) -> torch.Tensor:
        """Return a client's adapter as one flat float32 CPU vector ``(P,)`` (a copy).

        Aggregation runs on the CPU: it is one Gram matrix and one matmul, and keeping N copies
        of the adapters off the accelerator leaves its memory to the model.
        """
        return torch.cat([p.detach().reshape(-1).float().cpu() for p in self._params[client]])

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
            param.copy_(vector[offset : offset + size].view_as(param))  # casts dtype and device
            offset += size

    def set_matrix(self, matrix: torch.Tensor) -> None:
        """Overwrite every client's adapter from an ``(N, P)`` matrix."""
        for client in range(self.num_clients):
            self.set_vector(client, matrix[client])

    def state_dict(self, client: int) -> dict[str, torch.Tensor]:
        """Return a client's parameters as ``{key: tensor}`` with the adapter name removed."""
        return {k: p.detach().clone() for k, p in zip(self.keys, self._params[client], strict=True)}

    def save(self, directory: str | Path) -> None:
        """Export every client into ``<directory>/client_<id>/``.

        The adapter in peft format, plus the client module's parameters (when there is one) as
        ``item_components.safetensors`` beside it.
        """
        from safetensors.torch import save_file  # a transformers dependency

        self.model.save_pretrained(str(directory), selected_adapters=self.names)
        if self.client_modules is None:
            return
        for client, name in enumerate(self.names):
            tensors = {
                key[len(CLIENT_MODULE_PREFIX) :]: value.contiguous()
                for key, value in self.state_dict(client).items()
                if key.startswith(CLIENT_MODULE_PREFIX)
            }
            save_file(tensors, str(Path(directory) / name / CLIENT_MODULE_FILE))
