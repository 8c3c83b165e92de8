"""A defence of the hidden states that cross the split: per-token L2 clipping plus Gaussian noise.

Before the client's front hands its hidden states ``h_front (B, T, H)`` to the transport, every
token's vector is scaled down to an L2 norm of at most ``clip`` and Gaussian noise of standard
deviation ``noise * clip`` is added to each coordinate (training and evaluation alike: the
server receives both). Gradients flow through the clipping as through any other operation; the
noise is a constant to autograd.

This bounds what one token's vector can carry against noise of a known scale, the Gaussian
mechanism's shape, but it is **not** a differential-privacy guarantee by itself: nothing here
accounts for the many tokens, steps and rounds that reveal the same items, nor for the gradients
that travel back. Its effect is measured (``fellrec attack`` on the defended states,
``benchmarks/bench_hidden_defence.py`` against NDCG@10).

The noise must be secret from the server: it is drawn from the client's own generator
(:class:`ClientNoise`), never from torch's global random state, whose seed is in the shared
config and whose state the ``process`` transport even sends along for the server's dropout.
``seed`` fixes those draws (reruns bit-identical; each client has its own stream, so a deployed
client draws what the simulation's client draws for the same calls); without it every run draws
from fresh operating-system entropy, which is what a deployment should use (a seed in a config
the server reads lets it subtract the noise).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def clip_token_norms(hidden: Tensor, clip: float) -> Tensor:
    """Scale each token's vector (last dimension) to an L2 norm of at most ``clip``.

    Vectors already within the bound are unchanged; the scale is differentiable (the usual
    clipping gradient).

    Args:
        hidden: ``(..., H)`` hidden states.
        clip: The largest norm a token's vector keeps (> 0).

    Returns:
        The clipped states, same shape and dtype.
    """
    norms = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True)  # (..., 1)
    scale = (clip / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp(max=1.0)
    return hidden * scale


def defend_hidden_states(
    hidden: Tensor, clip: float, noise: float, generator: torch.Generator | None = None
) -> Tensor:
    """Per-token clipping to ``clip`` plus Gaussian noise of deviation ``noise * clip``.

    Args:
        hidden: ``(..., H)`` hidden states.
        clip: The largest norm a token's vector keeps (> 0).
        noise: Noise multiplier (>= 0); the noise's standard deviation is ``noise * clip``.
        generator: Where the noise is drawn from (on ``hidden``'s device); None: torch's
            random state.

    Returns:
        The defended states, same shape and dtype.
    """
    clipped = clip_token_norms(hidden, clip)
    if noise == 0:
        return clipped
    draw = torch.randn(
        hidden.shape, dtype=hidden.dtype, device=hidden.device, generator=generator
    )  # (..., H)
    return clipped + draw * (noise * clip)


@dataclass
class HiddenDefence:
    """``model.hidden_defence``: clip and noise each token's hidden state before it crosses.

    Off unless ``clip`` is set. Applied on the client's side of every transport (``local`` and
    ``process``), in training and evaluation, and by ``fellrec attack`` to the victims' states.
    """

    clip: float | None = None
    """The largest L2 norm a token's hidden vector keeps (> 0); None: the defence is off. The
    recipe's MiniLM front states have norms of about 8-12 (a token's embedding plus k_front
    blocks), so a clip of ~5 bounds every token."""
    noise: float = 0.0
    """Noise multiplier (>= 0): Gaussian noise of standard deviation ``noise * clip`` is added to
    every coordinate of every token's clipped vector (0: clipping only). Needs ``clip``."""
    seed: int | None = None
    """Seed of the clients' noise (each client its own stream), for reproducible simulations;
    None (the default, and what a deployment should use): fresh operating-system entropy per
    run. The server must not know it: whoever knows the seed can subtract the noise."""

    def validate(self) -> None:
        """Refuse values that cannot be meant, naming the setting.

        Raises:
            ValueError: For a clip that is not a finite number > 0, a noise multiplier that is
                not a finite number >= 0, or noise without a clip.
        """
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"model.hidden_defence.clip must be > 0, got {self.clip!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"model.hidden_defence.noise must be >= 0, got {self.noise!r}")
        if self.noise > 0 and self.clip is None:
            raise ValueError(
                "model.hidden_defence.noise is a multiple of model.hidden_defence.clip; set "
                "model.hidden_defence.clip too (e.g. 5.0)"
            )

    @property
    def enabled(self) -> bool:
        """Whether the defence changes anything (a clip is set)."""
        return self.clip is not None

    def __call__(self, hidden: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The states as they cross: defended if enabled, else ``hidden`` itself."""
        if self.clip is None:
            return hidden
        return defend_hidden_states(hidden, self.clip, self.noise, generator)

    def clip_only(self, hidden: Tensor) -> Tensor:
        """The deterministic part (the clipping): what an attacker who knows ``clip`` computes."""
        if self.clip is None:
            return hidden
        return clip_token_norms(hidden, self.clip)

    def describe(self) -> dict[str, Any]:
        """Plain values for records (``results.json``): ``{"clip", "noise", "noise_std"}``."""
        std = None if self.clip is None else self.noise * self.clip
        return {"clip": self.clip, "noise": self.noise if self.enabled else None, "noise_std": std}


#: What a stream is drawn for: one training round, or an evaluation pass of a stage.
NOISE_STAGES = ("train", "validation", "test")


def stream_seed(
    base: int, client: int, stage: str = "train", round_index: int = 0, parameters: int = 0
) -> int:
    """The seed of ``client``'s noise stream: its base, the stage, the round, the parameters.

    Args:
        base: The secret base (``model.hidden_defence.seed``, or the host's own secret).
        client: The client.
        stage: One of :data:`NOISE_STAGES`.
        round_index: The training round (0 for an evaluation pass).
        parameters: A digest of the client's parameters the pass starts from (0: unknown).
    """
    entropy = [base, client, NOISE_STAGES.index(stage), round_index, parameters]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


class ClientNoise:
    """The defence as a client applies it: clip, then noise from the client's own stream.

    One generator per client (and device), created at its first use, so the draws of a client
    do not depend on which other clients the host holds or in which order it runs them.

    Args:
        settings: ``model.hidden_defence`` (enabled).
        active_client: Which client the host is running now (its states are being sent).
        base: The host's secret base of the streams (a deployed node's own), or None: the
            configured seed, else fresh entropy.
    """

    def __init__(
        self,
        settings: HiddenDefence,
        active_client: Callable[[], int],
        base: int | None = None,
    ) -> None:
        if not settings.enabled:
            raise ValueError("ClientNoise needs an enabled model.hidden_defence (a clip)")
        self.settings = settings
        self.active_client = active_client
        # The base of every stream: the host's secret, else the configured seed, else fresh
        # entropy, kept in this process only (never logged or sent).
        if base is None:
            base = settings.seed if settings.seed is not None else secrets.randbits(62)
        self.base = base
        self._stream: tuple[str, int] = ("train", 0)
        self._parameters: Mapping[int, int] = {}
        self._generators: dict[tuple[int, str], torch.Generator] = {}

    def start(
        self, stage: str, round_index: int = 0, parameters: Mapping[int, int] | None = None
    ) -> None:
        """Start every client's stream of a training round or an evaluation pass afresh.

        Each pass draws from its own stream, seeded by the stage, the round and a digest of the
        parameters the client starts it from: a pass replayed from the same parameters (a
        resumed round, a restarted node asked again) adds exactly the same noise, so it reveals
        nothing new, and a pass from other parameters, or of another round or stage, never adds
        the same noise (the difference of two sends would cancel it).

        Args:
            stage: One of :data:`NOISE_STAGES`.
            round_index: The training round (0 for an evaluation pass).
            parameters: By client, a digest of its parameters at the start of the pass.
        """
        if stage not in NOISE_STAGES:
            raise ValueError(f"a noise stream's stage is one of {NOISE_STAGES}, got {stage!r}")
        self._stream = (stage, round_index)
        self._parameters = dict(parameters or {})
        self._generators.clear()

    def generator(self, client: int, device: torch.device) -> torch.Generator:
        """``client``'s generator on ``device`` in this pass (seeded at its first use)."""
        key = (client, str(device))
        if key not in self._generators:
            generator = torch.Generator(device=device)
            stage, round_index = self._stream
            digest = self._parameters.get(client, 0)
            generator.manual_seed(stream_seed(self.base, client, stage, round_index, digest))
            self._generators[key] = generator
        return self._generators[key]

    def __call__(self, hidden: Tensor) -> Tensor:
        """The active client's states as they cross: clipped and noised per token."""
        generator = self.generator(self.active_client(), hidden.device)
        return self.settings(hidden, generator)
