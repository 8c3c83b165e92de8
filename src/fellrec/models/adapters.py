"""One frozen backbone, one LoRA adapter per client, through peft's multi-adapter API.

The base weights exist once in memory; each client owns only its adapter (and, in the Lightning
layer,
its optimizer state). Parameters are exchanged as flat vectors in one fixed key order so the pure
aggregation functions can stack clients into an ``(N, P)`` matrix.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

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
    (BERT: query, value; LLaMA/Qwen2/Mistral: q_proj, v_proj), as FELLRec's reference does."""

    def to_peft(self) -> LoraConfig:
        """Return the equivalent peft ``LoraConfig``."""
        if self.r < 1:
            raise ValueError(f"model.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules) if self.target_modules else None,
        )


def adapter_name(client: int) -> str:
    """Return the peft adapter name of a client."""
    return f"client_{client}"


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
    """

    def __init__(
        self,
        backbone: nn.Module,
        lora: LoRASettings,
        num_clients: int,
        client_ids: list[int] | None = None,
    ) -> None:
        if num_clients < 1:
            raise ValueError(f"need at least one client, got {num_clients}")
        self.client_ids = list(range(num_clients)) if client_ids is None else list(client_ids)
        if len(self.client_ids) != num_clients:
            raise ValueError(f"{len(self.client_ids)} client ids for {num_clients} adapters")
        self.names = [adapter_name(c) for c in self.client_ids]
        config = lora.to_peft()
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
            if client == 0:
                self.keys = [name for name, _ in named]
            self._params.append([param for _, param in named])
        initial = self.get_vector(0)
        for client in range(1, num_clients):
            self.set_vector(client, initial)
        self.activate(0)

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of one client's adapter."""
        return sum(p.numel() for p in self._params[0])

    def parameters(self, client: int) -> list[nn.Parameter]:
        """Return a client's adapter parameters in the fixed key order."""
        return self._params[client]

    def activate(self, client: int) -> None:
        """Route forward passes through slot ``client``'s adapter (only it requires grad)."""
        if self.model.active_adapter != self.names[client]:
            self.model.set_adapter(self.names[client])

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
        """Return a client's adapter as ``{key: tensor}`` with the adapter name removed."""
        return {k: p.detach().clone() for k, p in zip(self.keys, self._params[client], strict=True)}
