"""Split execution of one Hugging Face backbone: client front -> server middle -> client back.

:class:`SplitModel` is a view over the very module objects of one model (weights shared, nothing
copied), cut by a :class:`~fellrec.models.split_plan.SplitPlan`. The client embeds the tokens
and runs the front blocks, the server runs the middle blocks behind a
:class:`~fellrec.models.transport.Transport`, and the client runs the back blocks and the final
norm. Only hidden states, the 2-D attention mask and position ids cross (gradients on the way back);
each side rebuilds its 4-D attention masks and rotary embeddings from them. The result equals the
unsplit model (:class:`UnsplitTrunk`) on every real token, loss and gradient included.

The 4-D masks are built here rather than with ``transformers.masking_utils``, whose signatures
differ between transformers 4.53 and 5.x; additive float masks work with the ``eager`` and ``sdpa``
attention implementations of both.

Longer than most modules: the unsplit trunk and the split model must build their masks and
positions alike to be equal number for number, so both live here; the families and config
checks are in :mod:`fellrec.models.split_support`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from fellrec.models.attention_masks import (
    additive_mask,
    decoder_allowed,
    position_ids_from_mask,
    sdpa_mask,
)
from fellrec.models.low_precision import cpu_attention_kernels
from fellrec.models.split_plan import SplitPlan, plan_split
from fellrec.models.split_support import (
    SUPPORTED_MODEL_TYPES,
    block_list,
    check_split_attention,
    check_split_config,
    configured_causal,
    inner_model,
    model_part,
    model_type_of,
    num_blocks,
    sliding_windows,
    split_family,
)
from fellrec.models.transport import LocalTransport, MiddleCall, Transport

#: KV cache classes split generation supports (per-side, growing or sliding key windows).
SPLIT_CACHES = ("DynamicCache",)
#: What the client does to the front's hidden states before they cross (``model.hidden_defence``:
#: :class:`~fellrec.models.hidden_defence.ClientNoise`), ``(B, T, H) -> (B, T, H)``.
Defence = Callable[[Tensor], Tensor]
#: A trunk: ``(input_ids, attention_mask) -> final hidden states (B, T, H)``.
Trunk = Callable[[Tensor, Tensor], Tensor]
#: Turns input ids into input vectors ``(B, T, H)`` in place of the token embedding table (the
#: sequential recommender's item tokens); the model's own position embeddings still apply.
InputEmbedder = Callable[[Tensor], Tensor]


def _hidden(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    # Blocks return a Tensor in transformers 5.x and a tuple in 4.x.
    return output[0] if isinstance(output, tuple) else output


#: transformers 5 encoders take a prepared 4-D mask as is; 4.x ones take 2-D or 3-D masks only.
_ENCODERS_TAKE_4D_MASKS = Version(transformers.__version__) >= Version("5")


def _causal_encoder_mask(attention_mask: Tensor, config: object, dtype: torch.dtype) -> Tensor:
    """The ``(B, 1, T, T)`` causal + key-padding mask of an encoder run causally.

    Boolean for sdpa, additive for eager attention (which adds the mask to the scores).
    """
    allowed = decoder_allowed(attention_mask)
    if check_split_attention(config) == "sdpa":
        return sdpa_mask(allowed)
    return additive_mask(allowed, dtype)


def _bidirectional_window(attention_mask: Tensor, window: int) -> Tensor:
    """``(B, 1, T, T)``: key ``j`` is real and at most ``window`` positions from query ``i``.

    ModernBERT's local attention, as transformers builds it (``|i - j| <= window``, where the
    config's ``sliding_window`` is half of ``local_attention``).
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    band = (positions[:, None] - positions[None, :]).abs() <= window
    return band[None, None] & attention_mask.bool()[:, None, None, :]


def _cached_key_columns(
    mask: Tensor,
    cache: Any,
    block: int,
    query_length: int,
    cache_position: Tensor | None = None,
) -> Tensor:
    """The mask's columns of the keys ``block``'s cache layer will attend to.

    A sliding-window cache layer keeps only its last ``window - 1`` keys, so the keys a new token
    sees are the last columns of the full mask, at the offset the cache reports; a full layer
    keeps every key and the mask is unchanged. transformers 5 asks the layer by query length;
    4.56-4.57 (whose ``DynamicCache(config=...)`` already builds sliding layers) by the new
    tokens' ``cache_position``; older 4.x caches keep every key.
    """
    sizes = getattr(cache, "get_mask_sizes", None)
    if sizes is None:
        return mask
    parameters = inspect.signature(sizes).parameters
    if "query_length" in parameters:
        length, offset = sizes(query_length, block)
    elif (
        "cache_position" in parameters
        and cache_position is not None
        and block < len(getattr(cache, "layers", ()))
    ):
        length, offset = sizes(cache_position, block)
    else:
        return mask
    if offset == 0 and length == mask.shape[-1]:
        return mask
    return mask[..., offset : offset + length]


def new_kv_cache(config: Any) -> Any:
    """An empty KV cache of the kind split generation keeps on each side (:data:`SPLIT_CACHES`).

    Args:
        config: The model's config (transformers 5 builds sliding-window layers from it).
    """
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x builds its layers lazily, without a config
        return DynamicCache()


class UnsplitTrunk:
    """The whole backbone in one piece, through the Hugging Face module's own forward.

    Decoders get explicit position ids from the mask (left-padded prompts and right-padded
    batches both work). Model types outside :data:`SUPPORTED_MODEL_TYPES` run too, with the
    model's default positions.

    Args:
        model: A Hugging Face model, possibly peft-wrapped.
        embed: Input vectors from the ids instead of the token embeddings (item tokens).
        causal: Run an encoder with a causal mask (each position sees itself and earlier ones),
            as the sequential recommender does; decoders are causal anyway.
    """

    def __init__(
        self, model: nn.Module, embed: InputEmbedder | None = None, causal: bool = False
    ) -> None:
        self.model = model
        self.inner = inner_model(model)
        self.family = SUPPORTED_MODEL_TYPES.get(model_type_of(model), "other")
        self.embed = embed
        self.causal = causal

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final hidden states ``(B, T, H)`` (decoders: after the final norm)."""
        inputs: dict[str, Tensor] = (
            {"input_ids": input_ids}
            if self.embed is None
            else {"inputs_embeds": self.embed(input_ids)}
        )
        with cpu_attention_kernels(next(iter(inputs.values()))):
            return self._forward(inputs, attention_mask)

    def _forward(self, inputs: dict[str, Tensor], attention_mask: Tensor) -> Tensor:
        """:meth:`__call__` under the attention kernels it picked."""
        if self.family == "decoder":
            out = self.inner(
                **inputs,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            )
        elif self.causal:
            if _ENCODERS_TAKE_4D_MASKS:
                # A 4-D mask passes through the encoder's mask preparation unchanged.
                dtype = next(self.inner.parameters()).dtype
                mask = _causal_encoder_mask(attention_mask, self.inner.config, dtype)
            else:
                # transformers 4.x encoders take a (B, T, T) 0/1 mask and make it additive.
                mask = decoder_allowed(attention_mask)[:, 0].to(attention_mask.dtype)
            out = self.inner(**inputs, attention_mask=mask)
        else:
            out = self.inner(**inputs, attention_mask=attention_mask)
        hidden: Tensor = out.last_hidden_state
        return hidden


class SplitModel:
    """Client front -> transport -> server middle -> client back, over one model's modules.

    Not an ``nn.Module``: it holds references to the model's own blocks, so the parameters stay
    registered once, in the model.

    Args:
        model: A supported Hugging Face model (bare or with a head), possibly peft-wrapped.
        plan: Which blocks run where (:func:`~fellrec.models.split_plan.plan_split`).
        transport: Carries the middle part's inputs and outputs (and their gradients).
        embed: Input vectors from the ids instead of the token embeddings (item tokens); on the
            client, like the embeddings.
        causal: Run an encoder with causal masks on both sides (decoders are causal anyway). A
            property of the model both sides are configured with, like its weights: nothing more
            crosses. An encoder whose config makes its own forward causal (BERT or RoBERTa with
            ``is_decoder=True``, see :func:`configured_causal`) runs causally either way.
        defence: Applied to the front's hidden states before they cross (``model.hidden_defence``:
            clipping and noise; None: they cross as computed). Here, on the client's side, so
            every transport carries the defended states.

    Raises:
        ValueError: If the model type or its attention implementation is unsupported, or the plan
            was made for another number of blocks.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: SplitPlan,
        transport: Transport,
        embed: InputEmbedder | None = None,
        causal: bool = False,
        defence: Defence | None = None,
    ) -> None:
        self.family = split_family(model)
        self.model = model
        self.inner = inner_model(model)
        self.blocks = block_list(self.inner, self.family)
        if plan.num_layers != len(self.blocks):
            raise ValueError(
                f"split plan for {plan.num_layers} blocks, but the model has {len(self.blocks)}"
            )
        config = self.inner.config
        check_split_attention(config)
        check_split_config(config)
        self.plan = plan
        self.transport = transport
        self.embed = embed
        # Both sides read the flag from the config they load, so they agree without a message.
        self.causal = causal or configured_causal(model)
        self.defence = defence
        family = self.family
        embeddings = model_part(self.inner, family, "embeddings")
        assert embeddings is not None  # required parts raise when absent
        self.embeddings: nn.Module = embeddings
        decoder = family == "decoder"
        self.positions = model_part(self.inner, family, "positions", required=False)
        self.dropout = model_part(self.inner, family, "dropout", required=False)
        self.norm = model_part(self.inner, family, "norm", required=decoder)
        self.rotary = model_part(self.inner, family, "rotary", required=False)
        self._windows = sliding_windows(config, len(self.blocks))
        # Rotary modules with one frequency table per attention kind (Gemma 3) take the kind.
        self._rotary_by_kind = self.rotary is not None and "layer_type" in (
            inspect.signature(self.rotary.forward).parameters
        )
        self._layer_types: list[str] = list(getattr(config, "layer_types", None) or [])
        names = inspect.signature(self.blocks[0].forward).parameters
        # A block's KV-cache argument: `cache` (recent transformers 5), `past_key_values` (5.0),
        # `past_key_value` (4.x); only the older ones also take a `cache_position`.
        self._cache_argument = next(
            (n for n in ("cache", "past_key_values") if n in names), "past_key_value"
        )
        self._takes_cache_position = "cache_position" in names

    def _decoder_inputs(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """Input vectors of a decoder: token (or item) embeddings, learned positions, dropout."""
        vectors = self.embed(input_ids) if self.embed is not None else None
        hidden = vectors if vectors is not None else self.embeddings(input_ids)
        if self.positions is not None:  # GPT-2: learned absolute positions
            hidden = hidden + self.positions(position_ids)
        if self.dropout is not None:
            hidden = self.dropout(hidden)
        return hidden

    def front(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Client: embeddings and front blocks.

        Returns:
            ``(hidden_states, attention_mask, position_ids)``: what crosses to the server.
        """
        if self.family == "decoder":
            position_ids = position_ids_from_mask(attention_mask)
            hidden = self._decoder_inputs(input_ids, position_ids)
        else:
            # Encoders count positions from the first token, padded or not, as their forward does.
            length = input_ids.shape[1]
            position_ids = torch.arange(length, device=input_ids.device).expand_as(input_ids)
            if self.embed is not None:
                # Encoders add their own absolute positions, exactly as their forward does.
                hidden = self.embeddings(input_ids=None, inputs_embeds=self.embed(input_ids))
            else:
                hidden = self.embeddings(input_ids=input_ids)
        hidden = self._run(self.plan.front, hidden, attention_mask, position_ids)
        return hidden, attention_mask, position_ids

    def front_step(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        cache: Any,
        cache_position: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Client, decoders: the front over new tokens, earlier tokens' keys and values cached.

        What generation runs on the client each step, and what the server's front copy
        (:mod:`fellrec.models.front_copy`) runs to try one candidate token per sequence without
        recomputing the prefix.

        Args:
            input_ids: The new tokens ``(B, T_new)``.
            attention_mask: ``(B, T)`` over every key, the cached ones first.
            cache: A KV cache (:func:`new_kv_cache`) holding the earlier tokens of the front's
                blocks; the new tokens' keys and values are appended to it. None: no cache (the
                new tokens are the whole sequence).
            cache_position: Where the new tokens go in the cache (transformers 4.x blocks).

        Returns:
            ``(hidden_states, position_ids)`` of the new tokens.
        """
        if self.family != "decoder":
            raise ValueError("only decoder (causal LM) fronts run with a KV cache")
        positions = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :]
        hidden = self._decoder_inputs(input_ids, positions)
        hidden = self._run(
            self.plan.front, hidden, attention_mask, positions, cache, cache_position
        )
        return hidden, positions

    def middle(
        self,
        hidden: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: Any = None,
        cache_position: Tensor | None = None,
    ) -> Tensor:
        """Server: the middle blocks (rebuilding masks and rotary embeddings from its inputs).

        With a ``cache`` (generation), the blocks keep their keys and values in it.
        """
        return self._run(
            self.plan.middle, hidden, attention_mask, position_ids, cache, cache_position
        )

    def back(self, hidden: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """Client: back blocks and, for decoders, the final norm."""
        hidden = self._run(self.plan.back, hidden, attention_mask, position_ids)
        if self.norm is not None:
            hidden = self.norm(hidden)
        return hidden

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final hidden states ``(B, T, H)``, equal to :class:`UnsplitTrunk` on real tokens."""
        hidden, attention_mask, position_ids = self.front(input_ids, attention_mask)
        hidden = self._cross(MiddleCall(self.middle), hidden, attention_mask, position_ids)
        return self.back(hidden, attention_mask, position_ids)

    def _cross(
        self, server: MiddleCall, hidden: Tensor, attention_mask: Tensor, position_ids: Tensor
    ) -> Tensor:
        """Hand the front's states to the transport, defended first when a defence is on.

        The one place every transport's forward message leaves the client: what the server
        receives is exactly what the defence returns.
        """
        if self.defence is not None:
            hidden = self.defence(hidden)  # (B, T, H), clipped and noised per token
        return self.transport.call_server(server, hidden, attention_mask, position_ids)

    def client_modules(self) -> list[nn.Module]:
        """Client modules: embeddings (and learned positions), front and back blocks, final norm."""
        modules = [self.embeddings, *(self.blocks[i] for i in (*self.plan.front, *self.plan.back))]
        modules += [m for m in (self.positions, self.norm) if m is not None]
        return modules

    def server_modules(self) -> list[nn.Module]:
        """Blocks the server holds (the middle)."""
        return [self.blocks[i] for i in self.plan.middle]

    def _run(
        self,
        blocks: range,
        hidden: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: Any = None,
        cache_position: Tensor | None = None,
    ) -> Tensor:
        """Run ``blocks`` in order, with masks and rotary embeddings rebuilt for this side.

        With a ``cache`` (generation), ``hidden`` holds only the new tokens while
        ``attention_mask`` covers every key; each block keeps its keys and values in the cache
        under its own index, so every side holds the cache of its own blocks only.
        """
        if not blocks:
            return hidden
        with cpu_attention_kernels(hidden):
            return self._run_blocks(
                blocks, hidden, attention_mask, position_ids, cache, cache_position
            )

    def _run_blocks(
        self,
        blocks: range,
        hidden: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: Any,
        cache_position: Tensor | None,
    ) -> Tensor:
        """:meth:`_run` under the attention kernels it picked."""
        masks = self._masks(blocks, attention_mask, hidden.dtype, hidden.shape[1])
        rotary = self._rotary(blocks, hidden, position_ids)
        if self.family == "encoder":
            for i in blocks:
                rotating = (
                    {} if rotary is None else {"position_embeddings": rotary[self._rotary_kind(i)]}
                )
                block = self.blocks[i]
                hidden = _hidden(block(hidden, attention_mask=masks[self._windows[i]], **rotating))
            return hidden
        caching: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            caching = {self._cache_argument: cache, "use_cache": True}
            if cache_position is not None and self._takes_cache_position:
                caching["cache_position"] = cache_position
        for i in blocks:
            if rotary is not None:
                caching["position_embeddings"] = rotary[self._rotary_kind(i)]
            mask = masks[self._windows[i]]
            if cache is not None and mask is not None:
                mask = _cached_key_columns(mask, cache, i, hidden.shape[1], cache_position)
            out = self.blocks[i](
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                **caching,
            )
            hidden = _hidden(out)
        return hidden

    def _rotary_kind(self, block: int) -> str | None:
        """The attention kind whose rotary table ``block`` uses (``None``: a single table)."""
        return self._layer_types[block] if self._rotary_by_kind else None

    def _rotary(
        self, blocks: range, hidden: Tensor, position_ids: Tensor
    ) -> dict[str | None, Any] | None:
        """The rotary embeddings ``blocks`` need, per attention kind (``None`` if no rotary)."""
        rotary = self.rotary
        if rotary is None:
            return None
        if not self._rotary_by_kind:
            return {None: rotary(hidden, position_ids)}
        kinds = {self._layer_types[i] for i in blocks}
        return {kind: rotary(hidden, position_ids, kind) for kind in kinds}

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        """Route the decoder's own forward through the split while the block is active.

        Hugging Face ``generate`` (beam search, KV cache, stopping) then drives the split model:
        every step runs client front -> transport -> server middle -> client back, and only the
        new tokens' hidden states, the 2-D mask and their position ids cross.
        """
        if self.family != "decoder":
            raise ValueError("only decoder (causal LM) backbones generate")
        self.inner.forward = self._generation_forward  # shadows the class's forward
        try:
            yield
        finally:
            del self.inner.forward
            self.transport.finish_generation()

    def _generation_forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        # transformers 5.x (later releases) passes the KV cache as `cache`, earlier releases as
        # `past_key_values` (with a `cache_position`); the output field is named alike.
        cache_key = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(cache_key)
        cache_position = kwargs.get("cache_position")
        if input_ids is None:
            raise ValueError("split generation needs input_ids (inputs_embeds are not supported)")
        if cache is not None and type(cache).__name__ not in SPLIT_CACHES:
            # Static, quantized or offloaded caches lay keys out otherwise than the masks built
            # here assume: refuse rather than generate differently.
            raise ValueError(
                f"split generation keeps a dynamic KV cache per side; generate() passed a "
                f"{type(cache).__name__} (generation_config.cache_implementation). Use the "
                "default cache, or set model.split_execution: false"
            )
        new = input_ids.shape[1]
        if attention_mask is None:
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = torch.ones(
                input_ids.shape[0], past + new, dtype=torch.long, device=input_ids.device
            )
        if use_cache is False:
            cache = None
        hidden, positions = self.front_step(input_ids, attention_mask, cache, cache_position)
        server = MiddleCall(self.middle, cache, cache_position)
        hidden = self._cross(server, hidden, attention_mask, positions)
        hidden = self._run(self.plan.back, hidden, attention_mask, positions, cache, cache_position)
        assert self.norm is not None
        fields = {"last_hidden_state": self.norm(hidden), cache_key: kwargs.get(cache_key)}
        # The output type with every field a causal-LM head reads (GPT-2's reads cross_attentions).
        return BaseModelOutputWithPastAndCrossAttentions(**fields)

    def _masks(
        self,
        blocks: range,
        attention_mask: Tensor,
        dtype: torch.dtype,
        query_length: int | None = None,
    ) -> dict[int | None, Tensor | None]:
        """The 4-D mask for each sliding window among ``blocks`` (``None``: no mask needed)."""
        length = attention_mask.shape[-1]
        # As transformers does: without padding, sdpa runs causal attention with no mask at all,
        # which lets it pick its fastest kernels (and keeps the numbers identical to unsplit).
        # The check costs one host sync per side, like transformers' own mask creation.
        no_padding = bool(attention_mask.all())
        sdpa = check_split_attention(self.inner.config) == "sdpa"
        masks: dict[int | None, Tensor | None] = {}
        for window in {self._windows[i] for i in blocks}:
            allowed: Tensor | None
            if self.family == "encoder" and self.causal:
                allowed = decoder_allowed(attention_mask)
            elif self.family == "encoder" and window is not None:
                allowed = _bidirectional_window(attention_mask, window)
            elif self.family == "encoder":  # eager and sdpa both read None as "attend to all"
                allowed = None if no_padding else attention_mask.bool()[:, None, None, :]
            elif no_padding and sdpa and (window is None or length < window):
                allowed = None
            else:
                allowed = decoder_allowed(attention_mask, window, query_length)
            if allowed is None:
                masks[window] = None
            else:
                masks[window] = sdpa_mask(allowed) if sdpa else additive_mask(allowed, dtype)
        return masks


def make_trunk(
    model: nn.Module,
    split: bool,
    k_front: int,
    k_back: int,
    transport: Transport | None = None,
    embed: InputEmbedder | None = None,
    causal: bool = False,
    defence: Defence | None = None,
) -> Trunk:
    """Build the trunk a recommender runs: the whole model, or its split view.

    Args:
        model: A Hugging Face model, possibly peft-wrapped.
        split: ``model.split_execution``: run client front / server middle / client back.
        k_front: ``model.k_front`` (ignored unsplit).
        k_back: ``model.k_back`` (ignored unsplit).
        transport: The wire to the server (default: a fresh :class:`LocalTransport`).
        embed: Input vectors from the ids instead of the token embeddings (item tokens).
        causal: Run an encoder causally (the sequential recommender).
        defence: ``model.hidden_defence`` on the states that cross (split only).

    Returns:
        ``(input_ids, attention_mask) -> final hidden states (B, T, H)``.

    Raises:
        ValueError: On an unsupported model or invalid ``model.k_front`` / ``model.k_back``.
    """
    if not split:
        return UnsplitTrunk(model, embed, causal)
    plan = plan_split(num_blocks(model), k_front, k_back)
    wire = transport if transport is not None else LocalTransport()
    return SplitModel(model, plan, wire, embed, causal, defence)
