"""Trainable per-item components: ID embeddings, item biases and a learned temperature.

A language model reads item *texts*; on real data the titles alone carry little of the
collaborative signal ("who watched this also watched that", "this is popular"), which is what
ranks well (benchmarks/README.md, "Why the text-only recommender did not learn"). These components
add it, as LLM recommenders that inject collaborative embeddings do (CoLLM, LLaRA):

- an **ID embedding** per item, added to the item's text vector (the hybrid item vector);
- an **item bias**, added to every score of the item (popularity, learned);
- a **learned temperature** of the cosine scores.

They are client parameters: each client holds its own copy, trained with its optimizer and
exchanged and aggregated with its LoRA adapter (:class:`fellrec.models.adapters.ClientAdapters`).
They live on the client side of a split model (the item vectors enter with the embeddings, the
scores leave with the head).

Longer than most modules: beside :class:`ItemComponents` live the small pure functions its
methods are made of (the popularity start, its DP noise, masking unavailable items, the centred
text table), so the math of one component reads in one place.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rows_of(table: Tensor, items: Tensor) -> Tensor:
    """The rows ``table[items]`` of a trainable table, with a reproducible gradient.

    Plain indexing (``table[items]``) back-propagates through ``index_put_(accumulate=True)``,
    which on a multi-threaded CPU adds the rows of repeated items with atomic float additions in
    whatever order the threads reach them: the gradient, hence every later step, then differs in
    the last bits from run to run (measured: two identical ML-100K runs drifted apart in round 0).
    :func:`torch.nn.functional.embedding` sums each row's gradient in index order instead.

    Args:
        table: ``(I, W)`` or ``(I,)``.
        items: Item indices of any shape.

    Returns:
        ``items.shape + (W,)``, or ``items.shape`` for a 1-D table.
    """
    if table.dim() == 1:
        return F.embedding(items, table.unsqueeze(1)).squeeze(-1)
    return F.embedding(items, table)


#: The choices of ``model.items.bias_init``.
BIAS_INITS = ("zeros", "log_popularity", "dp_log_popularity")
#: The choices of ``model.items.cold_start``.
COLD_STARTS = ("none", "text_ridge")


def log_popularity_bias(counts: Tensor) -> Tensor:
    """Item biases that rank by popularity: ``log(1 + count)``, centered on their mean.

    A softmax over these alone is the (add-one smoothed) popularity distribution; the centering
    keeps the biases' scale next to the cosine scores' (only differences between items count).

    Args:
        counts: Training interactions per item ``(I,)``.

    Returns:
        ``(I,)`` float32.

    Raises:
        ValueError: For a count below zero.
    """
    counts = counts.to(torch.float64)
    if counts.numel() and counts.min() < 0:
        raise ValueError("item counts must be >= 0")
    logs = torch.log1p(counts)
    return (logs - logs.mean()).to(torch.float32)


def ridge_from_text(text: Tensor, targets: Tensor, known: Tensor, ridge: float) -> Tensor:
    """Every item's ``targets`` row predicted from its text, by ridge regression on known items.

    A content-to-collaborative map, as cold-start recommenders learn one (e.g. DropoutNet): fitted
    on the items that have trained rows, ``targets[known] ~ mean + (text[known] - text_mean) @ W``
    with ``W = (Xc^T Xc + ridge I)^-1 Xc^T Yc`` (centred, so the intercept is not penalised), then
    applied to every item. Solved in float64 on the CPU (the Gram matrix is ``H x H``: tens of
    milliseconds at H = 384; float64 is slow or missing on some accelerators). The penalty must be
    positive: with fewer known items than text dimensions (a 2048-wide backbone on MovieLens-100K)
    the unpenalised system is singular, and solvers return huge rows instead of failing.

    Args:
        text: Item text vectors ``(I, H)``.
        targets: What to predict ``(I, W)`` or ``(I,)`` (ID vectors, biases).
        known: Bool ``(I,)``: the items to fit on (at least one).
        ridge: The L2 penalty, ``> 0``.

    Returns:
        Predictions of ``targets``' shape, dtype and device, for every item.

    Raises:
        ValueError: For no known item or a penalty that is not positive.
    """
    if not (math.isfinite(ridge) and ridge > 0):
        raise ValueError(f"model.items.cold_start_ridge must be > 0, got {ridge}")
    known = known.detach().to("cpu", torch.bool)
    if not bool(known.any()):
        raise ValueError("a text map needs at least one item with trained rows")
    columns = targets.detach().reshape(len(targets), -1).to("cpu", torch.float64)
    x = text.detach().to("cpu", torch.float64)
    x_mean = x[known].mean(0)
    y_mean = columns[known].mean(0)
    xc = x[known] - x_mean
    gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, xc.T @ (columns[known] - y_mean))
    predicted = y_mean + (x - x_mean) @ weights
    return predicted.reshape(targets.shape).to(targets.device, targets.dtype)


def gaussian_noise_scale(epsilon: float, delta: float) -> float:
    """Standard deviation of the Gaussian mechanism on counts of L2 sensitivity 1 at (eps, delta).

    One interaction more or less changes one item's count by 1, so a count vector released with
    Gaussian noise of this deviation is (``epsilon``, ``delta``)-differentially private for any one
    interaction. Calibrated by Opacus's RDP accountant (one release: sampling rate 1, one step),
    which is conservative (the analytic Gaussian mechanism needs slightly less noise).

    Raises:
        ValueError: For ``epsilon <= 0`` or ``delta`` outside ``(0, 1)``.
    """
    if epsilon <= 0:
        raise ValueError(f"model.items.bias_init_epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"model.items.bias_init_delta must be in (0, 1), got {delta}")
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        # One release has its optimal RDP order at the accountant's largest: a looser bound only.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=1.0,
                steps=1,
                accountant="rdp",
            )
        )


def mask_unavailable(
    scores: Tensor, unavailable: Tensor | None, candidates: Tensor | None = None
) -> Tensor:
    """Scores with the items that did not exist at training time set to ``-inf``.

    Under ``data.new_items`` the held-out items are not in the catalog a model trains on: they
    must not be pushed down as negatives of a softmax whose targets they can never be (a new
    item enters the catalog after training, with nothing learned about it but its text).

    Args:
        scores: ``(N, I)`` over the catalog, or ``(N, K)`` over ``candidates``.
        unavailable: Bool ``(I,)``: the items held out of training; None: every item exists.
        candidates: The item of each score column, ``(N, K)`` or ``(K,)`` (None: the catalog).
    """
    if unavailable is None:
        return scores
    hidden = unavailable.to(scores.device)
    hidden = hidden[candidates.to(scores.device)] if candidates is not None else hidden
    if hidden.dim() < scores.dim():
        hidden = hidden[None]  # one row of items for every example
    return scores.masked_fill(hidden, float("-inf"))


def noised_counts(counts: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """``counts`` plus Gaussian noise of deviation ``scale``, clipped at 0 (post-processing)."""
    counts = counts.to(torch.float64)
    noise = torch.randn(counts.shape, generator=generator, dtype=torch.float64) * scale
    return (counts + noise).clamp_min(0)


@dataclass
class ItemSettings:
    """Trainable per-item components of a recommender (client parameters, aggregated)."""

    ids: bool = True
    """A trainable ID embedding per item, added to the item's text vector."""
    id_dim: int | None = None
    """Width of the ID embeddings; None uses the backbone's hidden size (no projection). A
    smaller width (e.g. 64) adds a learned projection and saves memory on large catalogs."""
    text: bool = True
    """Sequential recommender: use the base model's embedding of each item's text (frozen,
    computed once). False leaves the ID embeddings alone (an ablation: what the text buys)."""
    bias: bool = True
    """A trainable bias per item, added to its scores (learns popularity)."""
    bias_init: str = "zeros"
    """Starting value of the item biases: ``zeros``, or ``log_popularity``: each client's biases
    start at ``log(1 + count)`` of the items in the data it trains on (its own; all clients' under
    centralized training), centered on their mean, so a model starts from the popularity ranking
    instead of having to learn it. With Adam a bias moves at most about ``items.lr`` per step, so
    a client with few steps per round cannot learn the popularity spread (~5 on ML-100K) itself.
    The biases are exchanged, so the server reads the counts back exactly from them;
    ``dp_log_popularity`` starts from counts with Gaussian noise instead, differentially private
    per interaction at (``bias_init_epsilon``, ``bias_init_delta``) (README, "What the split costs
    and leaks": what the training rounds still give away)."""
    bias_init_epsilon: float = 1.0
    """``dp_log_popularity``: the epsilon of the noised counts (per interaction, one release)."""
    bias_init_delta: float = 1e-5
    """``dp_log_popularity``: the delta of the noised counts."""
    bias_init_seed: int | None = None
    """Seed of the item components' noise: ``dp_log_popularity``'s count noise and the share
    noise (each client its own streams). None: fresh operating-system entropy in a simulation (a
    deployed node derives its own from its node key), what a deployment must use: whoever knows
    the seed (``model.seed`` is shared with the server) can subtract the noise. Set it for
    reproducible simulations (refused in a deployment's config)."""
    share_noise_ids: float = 0.0
    """Standard deviation of Gaussian noise a client adds to every coordinate of every ID-embedding
    row after its local training, before sending them (0: none). Every row then moves, so which
    rows the client trained is harder to read; it is kept (the client goes on from what it sent).
    Not differential privacy (nothing bounds an update's size): a measured trade-off."""
    share_noise_bias: float = 0.0
    """The same for every item bias (0: none)."""
    learn_temperature: bool = True
    """Learn the temperature of the cosine scores (starting from ``model.temperature``)."""
    lr: float | None = 5e-3
    """Learning rate of these components; None uses ``model.lr``. Per-item rows get a gradient
    only when their item appears, so they need a larger rate than the adapter."""
    init_std: float = 0.02
    """Standard deviation of the ID embeddings' initialisation."""
    cold_start: str = "none"
    """How items held out of training (``data.new_items``) are scored: ``none``: with the rows
    they started with (a random ID row, the mean bias), or ``text_ridge``: their ID row and bias
    predicted from their text by a ridge regression fitted, at scoring time, on the trained items
    (:func:`ridge_from_text`). Training is unchanged; it needs ``model.items.text: true``."""
    cold_start_ridge: float = 1.0
    """``text_ridge``: the L2 penalty of the regression, > 0 (text vectors are unit length)."""
    weight_decay: float | None = None
    """AdamW weight decay of the ID embeddings (and their projection) only; None gives them
    ``model.weight_decay`` like every other parameter. It pulls rarely seen items' rows back to
    their text vectors. The biases and the temperature are never decayed by it."""

    def validate(self) -> None:
        """Check ranges, naming the setting.

        Raises:
            ValueError: For a non-positive width, rate or deviation.
        """
        if self.id_dim is not None and self.id_dim < 1:
            raise ValueError(f"model.items.id_dim must be >= 1, got {self.id_dim}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"model.items.lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"model.items.weight_decay must be >= 0, got {self.weight_decay}")
        if self.init_std <= 0:
            raise ValueError(f"model.items.init_std must be > 0, got {self.init_std}")
        if self.bias_init not in BIAS_INITS:
            raise ValueError(
                f"model.items.bias_init must be one of {', '.join(BIAS_INITS)}, "
                f"got {self.bias_init!r}"
            )
        if self.bias_init != "zeros" and not self.bias:
            raise ValueError(
                f"model.items.bias_init={self.bias_init!r} needs model.items.bias: true"
            )
        if self.cold_start not in COLD_STARTS:
            raise ValueError(
                f"model.items.cold_start must be one of {', '.join(COLD_STARTS)}, "
                f"got {self.cold_start!r}"
            )
        if self.cold_start != "none" and not self.text:
            raise ValueError(
                f"model.items.cold_start={self.cold_start!r} predicts from item text: it needs "
                "model.items.text: true"
            )
        if not (math.isfinite(self.cold_start_ridge) and self.cold_start_ridge > 0):
            raise ValueError(
                f"model.items.cold_start_ridge must be > 0, got {self.cold_start_ridge}"
            )
        if self.bias_init == "dp_log_popularity":
            gaussian_noise_scale(self.bias_init_epsilon, self.bias_init_delta)  # checks both
        for name in ("share_noise_ids", "share_noise_bias"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"model.items.{name} must be >= 0, got {value}")
        if self.share_noise_ids > 0 and not self.ids:
            raise ValueError("model.items.share_noise_ids > 0 needs model.items.ids: true")
        if self.share_noise_bias > 0 and not self.bias:
            raise ValueError("model.items.share_noise_bias > 0 needs model.items.bias: true")

    @property
    def trainable(self) -> bool:
        """Whether these settings create any trainable parameter."""
        return self.ids or self.bias or self.learn_temperature


def item_component_parameters(num_items: int, hidden: int, settings: ItemSettings) -> int:
    """Trainable parameters of one client's :class:`ItemComponents` (counted, not built).

    Args:
        num_items: Catalog size ``I``.
        hidden: The backbone's hidden size ``H``.
        settings: Which components exist.
    """
    width = settings.id_dim or hidden
    ids = num_items * width + (width * hidden if width != hidden else 0) if settings.ids else 0
    return ids + (num_items if settings.bias else 0) + int(settings.learn_temperature)


def centered_text_table(table: Tensor) -> Tensor:
    """Center item-text embeddings on their catalog mean and L2-normalize them ``(I, H)``.

    Sentence embeddings of titles sit in a narrow cone (mean pairwise cosine ~0.3 for MiniLM on
    MovieLens titles), so uncentered they look alike to a dot product; centered, they spread over
    the sphere (mean pairwise cosine ~0).
    """
    return F.normalize(table - table.mean(0, keepdim=True), dim=-1)


class ItemComponents(nn.Module):
    """One client's per-item components.

    Args:
        num_items: Catalog size ``I``.
        hidden: Width ``H`` of the vectors the components add to (the backbone's hidden size).
        settings: Which components exist.
        temperature: The initial (or fixed) temperature of the cosine scores.
    """

    def __init__(
        self, num_items: int, hidden: int, settings: ItemSettings, temperature: float
    ) -> None:
        super().__init__()
        settings.validate()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        self.settings = settings
        self.num_items = num_items
        self.hidden = hidden
        width = settings.id_dim or hidden
        self.id_embedding: nn.Parameter | None = None
        self.id_projection: nn.Linear | None = None
        if settings.ids:
            self.id_embedding = nn.Parameter(torch.randn(num_items, width) * settings.init_std)
            if width != hidden:
                self.id_projection = nn.Linear(width, hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(num_items)) if settings.bias else None
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if settings.learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    @torch.no_grad()
    def start_from_popularity(
        self, counts: Tensor, seed: int = 0, unknown: Tensor | None = None
    ) -> None:
        """Set the item biases to :func:`log_popularity_bias` of ``counts`` (``(I,)``).

        With ``bias_init: dp_log_popularity`` the counts first get the Gaussian noise of
        :func:`gaussian_noise_scale`, drawn from ``seed``. Items of ``unknown`` (bool ``(I,)``:
        held out of training under ``data.new_items``) start at the mean bias of the others:
        nothing is known of a new item's popularity, so it enters as an average item rather
        than as one nobody wanted.

        Raises:
            ValueError: Without item biases, or for counts of another catalog size.
        """
        if self.bias is None:
            raise ValueError("these item components have no biases (model.items.bias)")
        if counts.shape != self.bias.shape:
            raise ValueError(f"{tuple(counts.shape)} item counts for {self.num_items} items")
        if self.settings.bias_init == "dp_log_popularity":
            scale = gaussian_noise_scale(
                self.settings.bias_init_epsilon, self.settings.bias_init_delta
            )
            counts = noised_counts(counts, scale, torch.Generator().manual_seed(seed))
        start = log_popularity_bias(counts)
        if unknown is not None and bool(unknown.any()) and not bool(unknown.all()):
            hidden = unknown.to(start.device)
            start[hidden] = start[~hidden].mean()
        self.bias.copy_(start)

    @property
    def shares_noise(self) -> bool:
        """Whether this client adds noise to its item rows or biases before sending them."""
        return self.settings.share_noise_ids > 0 or self.settings.share_noise_bias > 0

    @torch.no_grad()
    def add_share_noise(self, generator: torch.Generator) -> None:
        """Add ``share_noise_ids`` / ``share_noise_bias`` Gaussian noise to every row and bias.

        Drawn on the CPU from ``generator`` (the same values on any device), in place.
        """
        for table, std in (
            (self.id_embedding, self.settings.share_noise_ids),
            (self.bias, self.settings.share_noise_bias),
        ):
            if table is not None and std > 0:
                noise = torch.randn(table.shape, generator=generator) * std
                table.add_(noise.to(table.device, table.dtype))

    def id_vectors(self, items: Tensor | None = None) -> Tensor | None:
        """ID embeddings (projected to ``H``) of ``items`` (any shape) or of every item."""
        if self.id_embedding is None:
            return None
        rows = self.id_embedding if items is None else rows_of(self.id_embedding, items)
        return self.id_projection(rows) if self.id_projection is not None else rows

    def item_vectors(self, text: Tensor | None, items: Tensor | None = None) -> Tensor:
        """Hybrid item vectors: text vector plus ID vector ``(..., H)``.

        Args:
            text: Text vectors of the same items ``(..., H)`` (or of every item), or ``None``.
            items: Item indices (default: every item, in order).

        Raises:
            ValueError: If there is neither text nor an ID embedding.
        """
        ids = self.id_vectors(items)
        if text is None and ids is None:
            raise ValueError("an item needs a text vector or an ID embedding (model.items.ids)")
        if text is None:
            assert ids is not None
            return ids
        return text if ids is None else text + ids

    def catalog_logits(self, users: Tensor, text: Tensor | None, unknown: Tensor | None) -> Tensor:
        """Scores ``(B, I)`` of every item for evaluation, cold items scored as ``cold_start`` says.

        With ``text_ridge`` the held-out items' ID vectors and biases come from
        :meth:`cold_start_rows`; every other item's score is exactly :meth:`logits`'.

        Args:
            users: User vectors ``(B, H)``.
            text: Text vectors of every item ``(I, H)``, or None (IDs alone).
            unknown: Bool ``(I,)``: the items held out of training, or None.
        """
        cold = (
            self.settings.cold_start == "text_ridge"
            and text is not None
            and unknown is not None
            and bool(unknown.any())
            and not bool(unknown.all())
            and (self.id_embedding is not None or self.bias is not None)
        )
        if not cold:
            return self.logits(users, self.item_vectors(text))
        assert text is not None and unknown is not None
        ids, bias = self.cold_start_rows(text, unknown)
        vectors = text if ids is None else text + ids
        return self.logits(users, vectors, bias=bias)

    @torch.no_grad()
    def cold_start_rows(self, text: Tensor, unknown: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """ID vectors ``(I, H)`` and biases ``(I,)``, the ``unknown`` items' predicted from text.

        One ridge regression (:func:`ridge_from_text`) predicts both, the bias as one more column
        of the ID vectors. The fit on the known items is every item not held out (under ``Local``
        a client's rows of items outside its own data are still at their start, and count too).
        Evaluation scores every batch with the same parameters, so the result is kept until a
        parameter changes in place (an optimizer step, a checkpoint load or an aggregation bump
        the tensors' versions), moves (a new storage) or another text table or mask comes. Writes
        that bypass the version counter (``param.data.copy_``, ``AdamW(fused=True)``) would leave
        it stale; fellrec makes none (aggregation copies with ``Parameter.copy_``, AdamW is the
        default implementation). Each client's components keep one ``(I, H)`` result.
        """
        ids = self.id_vectors()
        parameters: list[Tensor] = [p for p in (self.id_embedding, self.bias) if p is not None]
        if self.id_projection is not None:
            parameters.append(self.id_projection.weight)
        inputs = [*parameters, text, unknown]
        # The storage too: Module.to() swaps a parameter's data without a new version. An
        # inference tensor (made under Lightning's evaluation) has no version: it cannot change
        # in place outside inference mode, and the cache holds it, so its identity suffices.
        versions: list[object] = [
            (None if t.is_inference() else t._version, t.data_ptr()) for t in inputs
        ]
        versions.append(self.settings.cold_start_ridge)
        cached = self.__dict__.get("_cold_start_cache")
        if (
            cached is not None
            and len(cached[0]) == len(inputs)
            and all(a is b for a, b in zip(cached[0], inputs, strict=True))
            and cached[1] == versions
        ):
            return cached[2], cached[3]
        unknown = unknown.to(text.device)
        columns = [] if ids is None else [ids.float()]
        if self.bias is not None:
            columns.append(self.bias.float()[:, None])
        predicted = ridge_from_text(
            text, torch.cat(columns, dim=1), ~unknown, self.settings.cold_start_ridge
        )
        width = 0 if ids is None else ids.shape[1]
        new_ids = None
        if ids is not None:
            new_ids = torch.where(unknown[:, None], predicted[:, :width].to(ids.dtype), ids)
        new_bias = None
        if self.bias is not None:
            new_bias = torch.where(unknown, predicted[:, width].to(self.bias.dtype), self.bias)
        # Not a buffer: never saved, moved or exchanged. It holds the inputs themselves (compared
        # by identity and in-place version), so no other tensor can pass for them.
        self.__dict__["_cold_start_cache"] = (inputs, versions, new_ids, new_bias)
        return new_ids, new_bias

    @property
    def scale(self) -> Tensor:
        """The inverse temperature of the cosine scores."""
        return self.log_scale.exp()

    def logits(
        self,
        users: Tensor,
        item_vectors: Tensor,
        items: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> Tensor:
        """Scores ``cos(user, item) / temperature + bias``.

        Args:
            users: User vectors ``(B, H)``.
            item_vectors: Item vectors ``(I, H)`` (all items, or the items ``items`` names, shared
                by every row) or ``(B, K, H)`` (per-row candidates).
            items: The item indices of ``item_vectors``: ``(C,)`` for shared ones, ``(B, K)`` for
                per-row candidates (for the biases); ``None`` with all items.
            bias: Every item's bias ``(I,)`` in place of the trained ones (cold-start scoring).

        Returns:
            ``(B, I)``, ``(B, C)`` or ``(B, K)``.
        """
        # The scale multiplies the (B, H) users, not the (B, I) scores: the same math, I / H
        # times fewer products (the full catalog is ~4x the hidden size on MovieLens-100K).
        users = F.normalize(users.float(), dim=-1) * self.scale
        vectors = F.normalize(item_vectors.float(), dim=-1)
        table = self.bias if bias is None else bias
        if vectors.dim() == 2:
            if table is None:
                return users @ vectors.T
            rows = table if items is None else rows_of(table, items)
            return torch.addmm(rows, users, vectors.T)  # the bias added by the matmul kernel
        scores = torch.einsum("bh,bkh->bk", users, vectors)
        if table is not None:
            assert items is not None, "per-row candidates need their item indices"
            scores = scores + rows_of(table, items)
        return scores
