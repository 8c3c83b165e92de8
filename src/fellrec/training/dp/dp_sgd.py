"""DP-SGD with per-user clipping inside each client: the settings, the clipping and the accounting.

What it protects: everything a client's training writes into the parameters it sends (LoRA
adapter and item components: ID rows, biases, temperature), at the level of **one user** of the
client (all of that user's interactions). Each optimizer step Poisson-samples the client's users
(each with probability ``q = expected_users / users``), takes at most ``windows_per_user`` of each
sampled user's training windows, computes each user's gradient over every parameter the client
steps, clips it to L2 norm ``max_grad_norm`` (``C``), sums, adds Gaussian noise of deviation
``noise_multiplier * C`` to every coordinate and divides by the expected number of users
(``q * users``, fixed: the standard estimator under Poisson sampling). The optimizer (AdamW, the
heating's learning rate, FedProx's data-independent proximal term) only post-processes that noised
gradient, and so does everything computed from the parameters afterwards (aggregation, selection).

The privacy loss over ``steps`` such steps is accounted with Opacus's RDP accountant (subsampled
Gaussian mechanism), converted to ``(epsilon, delta)``; ``delta`` defaults to ``1 / users`` of the
client.

What it does not protect: the per-round loss sum and example count a client reports (see the
README's leak table), evaluation metrics, and the hidden states that cross the split (a separate
defence). Those are listed, not hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fellrec.models.item_components import ItemSettings
from fellrec.models.transports import transport_kind
from fellrec.training.batches.schedule import user_sampled_steps


@dataclass
class DPSGDSettings:
    """``model.dp_sgd``: user-level DP-SGD inside every client (off when the section is unset)."""

    noise_multiplier: float = 1.0
    """sigma: the noise's deviation per coordinate, in units of ``max_grad_norm``."""
    max_grad_norm: float = 1.0
    """C: each user's gradient (over everything the client steps) is clipped to this L2 norm."""
    expected_users: int = 64
    """Users sampled per step on average (Poisson); the sample rate is this over the client's users
    (capped at 1). A client's round takes ``ceil(users / expected_users)`` steps per local epoch."""
    windows_per_user: int = 4
    """At most this many of a sampled user's training windows enter its gradient (chosen at random,
    seeded): bounds the cost of a heavy user, not the privacy (clipping does that)."""
    delta: float | None = None
    """The delta of the reported (epsilon, delta); None: 1 / the client's number of users."""
    max_loss: float = 10.0
    """Each user's mean loss is clipped to ``[0, max_loss]`` before it enters the loss the client
    reports (which FELLRec's heating reads): its sensitivity."""
    loss_noise: float = 5.0
    """The reported loss sum's noise, in units of ``max_loss``: released per step on the same
    sampled users as the gradient, so the two are accounted as one Gaussian mechanism of
    multiplier ``1 / sqrt(1 / noise_multiplier**2 + 1 / loss_noise**2)`` (5.0 costs about 2% of
    sigma at sigma 1)."""
    popularity_noise: float | None = None
    """Start each client's item biases from its item popularity counted over its users, released
    with user-level DP: every user counts each of at most ``popularity_items`` of its training
    items (drawn at random) once, and Gaussian noise of deviation ``popularity_noise *
    sqrt(popularity_items)`` (the count vector's L2 sensitivity) is added before
    ``log(1 + count)``; accounted together with the training. None: the biases start at zero."""
    popularity_items: int = 32
    """A user's items that count towards the popularity start at most."""
    seed: int | None = None
    """Seed of the user sampling and the noise (each client its own streams). None: fresh
    operating-system entropy, drawn once per process and kept in its checkpoints, which is what a
    deployment must use: the guarantee needs both secret from the server, and whoever knows the
    seed can replay the sampling and subtract the noise. Set it for reproducible simulations."""

    def validate(self) -> None:
        """Check every value, naming the setting.

        Raises:
            ValueError: For a non-positive or non-finite value.
        """
        for name in ("noise_multiplier", "max_grad_norm", "max_loss", "loss_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"model.dp_sgd.{name} must be > 0, got {value}")
        if self.popularity_noise is not None and not (
            math.isfinite(self.popularity_noise) and self.popularity_noise > 0
        ):
            raise ValueError(
                f"model.dp_sgd.popularity_noise must be > 0 (or null), got {self.popularity_noise}"
            )
        for name in ("expected_users", "windows_per_user", "popularity_items"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"model.dp_sgd.{name} must be >= 1, got {value}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"model.dp_sgd.delta must be in (0, 1), got {self.delta}")

    @property
    def step_noise_multiplier(self) -> float:
        """The multiplier the accountant counts per step: the gradient and the loss together.

        Each sampled user moves the gradient sum by at most ``max_grad_norm`` and the loss sum by
        at most ``max_loss``; in units of their noises that is one Gaussian mechanism whose
        sensitivity is ``sqrt(1 / sigma**2 + 1 / loss_noise**2)``.
        """
        return 1.0 / math.sqrt(self.noise_multiplier**-2 + self.loss_noise**-2)

    def sample_rate(self, users: int) -> float:
        """Poisson sample rate of a client with ``users`` users."""
        return min(1.0, self.expected_users / max(users, 1))

    def steps_per_round(self, users: int, local_epochs: int) -> int:
        """Optimizer steps a client with ``users`` users takes in a round."""
        return user_sampled_steps(users, self.expected_users, local_epochs)

    def client_delta(self, users: int) -> float:
        """The delta reported for a client with ``users`` users."""
        return self.delta if self.delta is not None else 1.0 / max(users, 2)


def epsilon_spent(
    history: Sequence[tuple[float, float, int]],
    delta: float,
    releases: Sequence[float] = (),
) -> float:
    """Epsilon at ``delta`` of subsampled Gaussian steps (Opacus's RDP accountant).

    Args:
        history: ``(noise multiplier, sample rate, steps)`` of each stretch of steps taken
            with the same settings (sigma; q, the Poisson sampling probability of a user).
        delta: The target delta.
        releases: Noise multipliers of further Gaussian releases of the same users' data (each
            once, unsampled, e.g. the popularity start), composed in the same accountant.

    Returns:
        The epsilon (0 for nothing released).
    """
    composed = [(sigma, 1.0, 1) for sigma in releases]
    composed += [(sigma, rate, steps) for sigma, rate, steps in history if steps > 0]
    if not composed:
        return 0.0
    from opacus.accountants import RDPAccountant  # heavy import, only when accounting

    accountant = RDPAccountant()
    accountant.history = composed
    return float(accountant.get_epsilon(delta=delta))


def dp_user_popularity(
    user_items: Sequence[np.ndarray],
    num_items: int,
    max_items: int,
    noise_multiplier: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each item's number of users, released with user-level Gaussian noise ``(I,)``.

    Every user counts each of at most ``max_items`` of its distinct items once (a random subset
    when it has more), so one user changes the count vector by at most ``sqrt(max_items)`` in L2;
    the noise's deviation is ``noise_multiplier * sqrt(max_items)``. Negative counts are clipped to
    0 (post-processing).

    Args:
        user_items: Each user's training items.
        num_items: I.
        max_items: The items a user counts at most.
        noise_multiplier: The noise's deviation in units of the sensitivity.
        generator: Secret, seeded generator of the subsets and the noise (CPU).
    """
    counts = torch.zeros(num_items, dtype=torch.float64)
    for items in user_items:
        distinct = torch.as_tensor(np.unique(items), dtype=torch.long)
        if len(distinct) > max_items:
            distinct = distinct[torch.randperm(len(distinct), generator=generator)[:max_items]]
        counts[distinct] += 1
    deviation = noise_multiplier * math.sqrt(max_items)
    noise = torch.randn(num_items, generator=generator, dtype=torch.float64) * deviation
    return (counts + noise).clamp_min(0)


def clip_factor(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``min(1, C / norm)``: scales a gradient of L2 norm ``norm`` into the ball of radius C."""
    return (max_norm / (norm + 1e-12)).clamp(max=1.0)


class UserGradientSum:
    """The sum of per-user clipped gradients of one optimizer step, and its noised release.

    Args:
        params: The parameters the client steps (their ``.grad`` holds one user's gradient when
            :meth:`add_user` is called).
        settings: The DP-SGD settings.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], settings: DPSGDSettings) -> None:
        self.params = list(params)
        self.settings = settings
        numel = sum(p.numel() for p in self.params)
        self.total = torch.zeros(numel, dtype=torch.float32, device=self.params[0].device)
        self.users = 0

    def add_user(self) -> float:
        """Clip the gradient now in the parameters' ``.grad``, add it to the sum, clear ``.grad``.

        Returns:
            The user's gradient norm before clipping.
        """
        grads = [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
            for p in self.params
        ]
        flat = torch.cat(grads).to(self.total.dtype)
        norm = flat.norm()
        self.total += flat * clip_factor(norm, self.settings.max_grad_norm)
        self.users += 1
        for p in self.params:
            p.grad = None
        return float(norm)

    def release(self, expected_users: float, generator: torch.Generator) -> None:
        """Write ``(sum + N(0, (sigma C)^2)) / expected_users`` into the parameters' ``.grad``.

        Args:
            expected_users: ``q * users``: the fixed denominator of the Poisson estimator.
            generator: Seeded generator of the noise (CPU).
        """
        deviation = self.settings.noise_multiplier * self.settings.max_grad_norm
        noise = torch.randn(self.total.shape, generator=generator, dtype=self.total.dtype)
        noisy = (self.total + noise.to(self.total.device) * deviation) / expected_users
        offset = 0
        for p in self.params:
            p.grad = noisy[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
            offset += p.numel()


def check_dp_sgd_compatible(settings: DPSGDSettings, transport: str, items: ItemSettings) -> None:
    """Refuse the settings under which ``model.dp_sgd`` would not bound what a client sends.

    Args:
        settings: ``model.dp_sgd``.
        transport: ``model.transport``.
        items: ``model.items``.

    Raises:
        ValueError: Naming the setting that breaks the guarantee and what to use instead.
    """
    if not transport_kind(transport).server_in_process:
        raise ValueError(
            f"model.dp_sgd needs model.transport: local: with model.transport: {transport} the "
            "server steps the middle blocks' LoRA from its own unclipped gradients, so no "
            "per-user clipping covers everything trained on a client's data"
        )
    if settings.popularity_noise is not None and not items.bias:
        raise ValueError(
            "model.dp_sgd.popularity_noise starts the item biases: it needs model.items.bias: true"
        )
    if items.bias_init != "zeros":
        raise ValueError(
            f"model.dp_sgd needs model.items.bias_init: zeros, got {items.bias_init!r}: "
            "log_popularity sends each client's raw item counts in its first parameters, and "
            "dp_log_popularity protects single interactions, not a user's whole history"
        )


def check_dp_sgd_trainer(precision: str, world_size: int) -> None:
    """Refuse trainer settings under which the per-user clipping would not hold.

    Args:
        precision: The trainer's precision (``32-true``, ``bf16-mixed``, ``16-mixed``, ...).
        world_size: Its training processes.

    Raises:
        ValueError: Naming the flag.
    """
    if precision.startswith("16"):
        raise ValueError(
            f"model.dp_sgd clips each user's gradient as computed: --trainer.precision {precision} "
            "scales the loss (and its gradients) by a changing factor; use 32 or bf16-mixed"
        )
    if world_size > 1:
        raise ValueError(
            "model.dp_sgd clips each user's gradient in one process; run it with "
            "--trainer.devices 1"
        )
