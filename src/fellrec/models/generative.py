"""Generative recommender (BIGRec-style): a causal LM writes the next title, grounded on items.

Training is the causal-LM loss of "prompt + quoted target title + eos" (whole sequence, as the
reference, or response only). Recommending runs beam search with the active adapter, parses the
generated title, embeds it with the base model *without* adapters (last layer after the final
norm, at the last token or averaged over the title's tokens: ``model.prompt.grounding``) and
scores every item by the negative L2 distance to its title's embedding.

Token ids are built from cached pieces (every title once, every prompt once), never re-tokenized per
step; batches are padded here, so the caller's tokenizer is never mutated.

Longer than most modules: it is one class, whose training loss, prompt rendering, beam search
and grounding share one tokenized catalog and its caches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from fellrec.models.catalog_trie import CatalogTrie
from fellrec.models.embedding_cache import cache_path, load_or_compute, model_fingerprint
from fellrec.models.encoder import pool
from fellrec.models.popularity_grounding import with_popularity
from fellrec.models.prompts import (
    PromptSettings,
    parse_response,
    render_prompt,
    render_response,
    user_message,
)

Trunk = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GenerativeRecommender(nn.Module):
    """Trains a causal LM on next-title prompts and grounds its generations onto item titles.

    Args:
        model: A Hugging Face causal LM, usually a peft model whose active adapter is trained.
        tokenizer: Its tokenizer (needs an eos token; pad falls back to eos). Not mutated.
        titles: The title of every item index.
        prompt: Prompt wording, cutoff and decoding settings.
        trunk: ``trunk(input_ids, attention_mask) -> hidden (B, T, H)`` after the final norm, the
            training forward (e.g. split execution). ``None`` runs the model's own decoder. A
            trunk with a ``generating()`` context (the split model) also carries beam search.
        item_batch_size: Titles embedded per forward pass.
        embedding_cache: Directory to keep item-title embeddings in across runs (optional).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        titles: Sequence[str],
        prompt: PromptSettings,
        trunk: Trunk | None = None,
        item_batch_size: int = 64,
        embedding_cache: str | Path | None = None,
    ) -> None:
        super().__init__()
        prompt.validate()
        if not titles:
            raise ValueError("the generative recommender needs at least one item title")
        if item_batch_size < 1:
            raise ValueError(f"item_batch_size must be >= 1, got {item_batch_size}")
        if tokenizer.eos_token_id is None:
            raise ValueError("model.backbone: the tokenizer has no eos token to end responses")
        if prompt.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "model.prompt.template: chat needs a tokenizer with a chat template, and "
                f"model.backbone's tokenizer ({type(tokenizer).__name__}) has none; use "
                "model.prompt.template: alpaca"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.settings = prompt
        self.titles = list(titles)
        self.item_batch_size = item_batch_size
        self.embedding_cache = Path(embedding_cache) if embedding_cache is not None else None
        # A plain attribute, not a submodule: a split trunk may hold modules owned elsewhere.
        self.__dict__["_trunk"] = trunk
        #: Set by :meth:`lockstep`: the largest count over the processes (sharded blocks).
        self._max_over_processes: Callable[[int], int] | None = None
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        # Keep the tokenizer's own leading bos (LLaMA adds one) but never its trailing specials
        # (a BERT-style tokenizer would end every prompt with [SEP]).
        bos = tokenizer.bos_token_id
        special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        prefixed = bos is not None and special[:1] == [bos] and plain[:1] != [bos]
        self.prefix: list[int] = [int(bos)] if prefixed and bos is not None else []
        encoded = tokenizer(self.titles, add_special_tokens=False)["input_ids"]
        self.title_ids: list[list[int]] = [list(ids) for ids in encoded]
        self._responses: dict[int, list[int]] = {}
        self._prompts: dict[tuple[str, tuple[int, ...], int], list[int]] = {}
        #: Item-title tables by ``model.prompt.grounding`` (each computed once).
        self._item_tables: dict[str, torch.Tensor] = {}
        self._trie: CatalogTrie | None = None

    @property
    def num_items(self) -> int:
        """Number of items in the catalog."""
        return len(self.titles)

    @property
    def device(self) -> torch.device:
        """Device of the model weights."""
        return next(self.model.parameters()).device

    def base_model(self) -> Any:
        """The Hugging Face causal LM under the peft wrapper (adapters stay injected)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    # ----- tokens -------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def response_ids(self, target: int) -> list[int]:
        """Token ids of the quoted target title followed by eos (cached)."""
        if target not in self._responses:
            title = render_response(self.titles[target])
            self._responses[target] = [*self._encode(title), self.eos_id]
        return self._responses[target]

    def _render_prompt(self, items: Sequence[int]) -> list[int]:
        titles = [self.titles[i] for i in items]
        if self.settings.template == "chat":
            # The template writes its own specials (a bos where it wants one) as text, which the
            # tokenizer parses back into their ids: no prefix of ours.
            messages = [{"role": "user", "content": user_message(self.settings, titles)}]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return self._encode(str(text))
        return [*self.prefix, *self._encode(render_prompt(self.settings, titles))]

    def prompt_ids(self, history: Sequence[int], budget: int) -> list[int]:
        """Token ids of the prompt for a history (oldest first), at most ``budget`` long (cached).

        The oldest items are dropped until the prompt fits; the instruction is always kept, so a
        prompt with no history left may still exceed a budget smaller than the instruction.
        """
        key = (self.settings.template, tuple(history), budget)
        if key in self._prompts:
            return self._prompts[key]
        items = list(history)
        ids = self._render_prompt(items)
        if len(ids) > budget and items:
            # Binary search for the most recent items that fit: the length grows with every item
            # kept, so this is exact with log2(H) tokenizer calls, done once per history.
            fits, too_long = 0, len(items)
            while too_long - fits > 1:
                middle = (fits + too_long) // 2
                if len(self._render_prompt(items[len(items) - middle :])) <= budget:
                    fits = middle
                else:
                    too_long = middle
            ids = self._render_prompt(items[len(items) - fits :])
        self._prompts[key] = ids
        return ids

    def _pad(self, sequences: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, span] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    # ----- training -----------------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, T, H)`` through the trunk (or the unsplit decoder)."""
        trunk: Trunk | None = self.__dict__["_trunk"]
        if trunk is not None:
            return trunk(input_ids, attention_mask)
        return self._decode(input_ids, attention_mask)

    def _decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self.base_model()
        decoder = getattr(base, base.base_model_prefix)  # LlamaModel for LLaMA, etc.
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        )
        return out.last_hidden_state

    def losses(self, histories: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example mean token cross-entropy ``(B,)`` of the causal LM.

        Runs in whatever mode the caller set (train for training, eval for validation loss).

        Args:
            histories: Item indices ``(B, H)``, oldest first, left-padded with ``-1``.
            targets: Target item indices ``(B,)``.

        Returns:
            Each example's mean loss over its counted tokens (the whole sequence after the first
            token, or the response and eos only); padding never counts. No batch reduction.
        """
        sequences, starts = [], []
        for row, target in zip(histories.tolist(), targets.tolist(), strict=True):
            response = self.response_ids(target)
            budget = self.settings.max_prompt_tokens - len(response)
            prompt = self.prompt_ids([i for i in row if i >= 0], budget)
            sequences.append([*prompt, *response])
            starts.append(len(prompt))
        input_ids, attention_mask = self._pad(sequences, left=False)
        hidden = self.hidden_states(input_ids, attention_mask)  # (B, T, H)
        counted = attention_mask[:, 1:].bool()  # position t predicts token t + 1
        if self.settings.response_only_loss:
            label_pos = torch.arange(1, input_ids.shape[1], device=input_ids.device)
            start = torch.tensor(starts, device=input_ids.device).unsqueeze(1)
            counted &= label_pos.unsqueeze(0) >= start
        rows, cols = counted.nonzero(as_tuple=True)
        # The LM head only runs on counted positions: (N, V) instead of (B, T, V).
        logits = self.base_model().get_output_embeddings()(hidden[rows, cols])
        tokens = F.cross_entropy(logits.float(), input_ids[rows, cols + 1], reduction="none")
        sums = torch.zeros(len(sequences), device=tokens.device).index_add(0, rows, tokens)
        counts = torch.bincount(rows, minlength=len(sequences)).clamp_min(1)
        return sums / counts

    # ----- inference ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        # Remember every module's flag: callers may mix modes (e.g. a frozen base kept in eval).
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _without_adapters(self) -> contextlib.AbstractContextManager[Any]:
        if isinstance(self.model, PeftModel):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def lockstep(self, max_over_processes: Callable[[int], int]) -> None:
        """Run the model equally often on every process from now on (sharded blocks).

        Beam search keeps stepping on a process whose beams finished until all have
        (``synced_gpus``); grounding pads with extra batches. The item-title table of the
        configured ``model.prompt.grounding`` is computed now, before the blocks are sharded, so
        no process computes it alone later (a grounding switched to afterwards computes its
        table in lockstep, padded like any grounding).
        """
        self.item_embeddings()
        self._max_over_processes = max_over_processes

    def _embed(self, sequences: list[list[int]]) -> torch.Tensor:
        """Title embeddings ``(N, H)``: last-layer states of the base model without adapters.

        ``model.prompt.grounding``: the state at the last token, or the mean over the title's
        tokens (the prefix's states left out; a sequence of the prefix alone keeps them).
        """
        mean = self.settings.grounding == "mean"
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        starts = range(0, len(order), self.item_batch_size)
        calls = len(starts)
        if self._max_over_processes is not None:
            calls = self._max_over_processes(calls)
        chunks = []
        with self._eval_mode(), self._without_adapters(), torch.inference_mode():
            for start in starts:
                batch = [sequences[i] for i in order[start : start + self.item_batch_size]]
                input_ids, attention_mask = self._pad(batch, left=True)
                hidden = self._decode(input_ids, attention_mask)
                if mean:
                    # In float32: a mean summed in bf16 (autocast) would lose the small digits.
                    mask = self._title_mask(batch, attention_mask)
                    chunks.append(pool(hidden.float(), mask, "mean"))
                else:
                    chunks.append(hidden[:, -1].float())
            for _ in range(calls - len(starts)):
                # Another process has more batches: run its sharded blocks along (discarded).
                self._decode(*self._pad([[self.eos_id]], left=True))
            encoded = torch.cat(chunks)
        # Copied out of inference mode so callers may keep it around autograd.
        table = torch.empty(encoded.shape, dtype=encoded.dtype, device=encoded.device)
        table[torch.tensor(order, device=encoded.device)] = encoded
        return table

    def _title_mask(self, batch: list[list[int]], attention_mask: torch.Tensor) -> torch.Tensor:
        """``attention_mask`` of left-padded ``batch`` without the prefix's positions."""
        mask = attention_mask.clone()
        width = mask.shape[1]
        for row, sequence in enumerate(batch):
            if len(sequence) > len(self.prefix):
                start = width - len(sequence)
                mask[row, start : start + len(self.prefix)] = 0
        return mask

    def _title_sequence(self, ids: list[int]) -> list[int]:
        sequence = [*self.prefix, *ids]
        return sequence if sequence else [self.eos_id]  # an empty generation still gets a state

    def _cache_file(self) -> Path | None:
        if self.embedding_cache is None:
            return None
        key = [*model_fingerprint(self.base_model()), self.prefix, self.titles]
        if self.settings.grounding != "last_token":
            # Appended, so the default's key (and the tables cached under it) stays as it was.
            key.append(self.settings.grounding)
        return cache_path(self.embedding_cache, "item-embeddings", key)

    def item_embeddings(self) -> torch.Tensor:
        """Item-title embeddings ``(I, H)`` of the base model without adapters (computed once).

        One table per ``model.prompt.grounding``, kept in memory and in ``embedding_cache`` (if
        set) keyed by the model path, titles and grounding.
        """
        grounding = self.settings.grounding
        if grounding not in self._item_tables:
            self._item_tables[grounding] = load_or_compute(
                self._cache_file(),
                lambda: self._embed([self._title_sequence(ids) for ids in self.title_ids]),
                self.device,
            )
        return self._item_tables[grounding]

    def _beam_search(self, histories: torch.Tensor, trie: CatalogTrie | None) -> torch.Tensor:
        """The generated tokens of every beam kept ``(B * R, G)``, best beam of a row first.

        With ``trie`` every beam is kept (``R = num_beams``) and may only write catalog
        responses; without it the best beam of each row is (``R = 1``).
        """
        budget = self.settings.max_prompt_tokens
        prompts = [
            self.prompt_ids([i for i in row if i >= 0], budget) for row in histories.tolist()
        ]
        input_ids, attention_mask = self._pad(prompts, left=True)
        start = input_ids.shape[1]
        beams = self.settings.num_beams
        config = GenerationConfig(
            num_beams=beams,
            num_return_sequences=beams if trie is not None else 1,
            max_new_tokens=max(self.settings.max_new_tokens, trie.longest if trie else 0),
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        allowed = None
        if trie is not None:

            def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
                return trie.allowed(sequence[start:].tolist())

        # A split trunk routes every decoding step through client front -> transport -> server
        # middle -> client back (each side keeping the KV cache of its own blocks).
        routing = getattr(self.__dict__["_trunk"], "generating", None)
        with self._eval_mode(), torch.inference_mode(), routing() if routing else nullcontext():
            generate: Any = self.model.generate
            output = generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                prefix_allowed_tokens_fn=allowed,
                # Sharded blocks: every process steps until all processes' beams are done.
                synced_gpus=self._max_over_processes is not None,
            )
        return output[:, start:]

    def generate_titles(self, histories: torch.Tensor) -> list[str]:
        """Beam-search one title per history with the active adapter (eval mode, restored after).

        Args:
            histories: Item indices ``(B, H)``, oldest first, left-padded with ``-1``.

        Returns:
            The parsed titles (possibly not in the catalog, possibly empty).
        """
        generated = self._beam_search(histories, None)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [parse_response(text) for text in texts]

    def catalog_trie(self) -> CatalogTrie:
        """The prefix trie of every item's response (built once)."""
        if self._trie is None:
            responses = [self.response_ids(item) for item in range(self.num_items)]
            self._trie = CatalogTrie(responses, self.eos_id, self.pad_id)
        return self._trie

    def generate_items(self, histories: torch.Tensor) -> list[list[int]]:
        """Beam-search catalog items per history, constrained to titles (best first, distinct).

        Args:
            histories: Item indices ``(B, H)``, oldest first, left-padded with ``-1``.

        Returns:
            Per history, the items its beams wrote, in beam-score order (up to ``num_beams``
            items; more when titles are shared by several items).
        """
        trie = self.catalog_trie()
        generated = self._beam_search(histories, trie)
        beams = generated.view(len(histories), self.settings.num_beams, -1)
        ranked: list[list[int]] = []
        for row in beams.tolist():
            items: list[int] = []
            for beam in row:
                items += [item for item in trie.lookup(beam) if item not in items]
            ranked.append(items)
        return ranked

    def ground(self, titles: Sequence[str], exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Score every item for each title by the negative L2 distance of their embeddings.

        Args:
            titles: Generated titles (already parsed).
            exclude: Optional ``(B, I)`` boolean mask of items to score ``-inf`` (e.g. consumed).

        Returns:
            Scores ``(B, I)``, higher is better.
        """
        table = self.item_embeddings()
        queries = self._embed([self._title_sequence(self._encode(title)) for title in titles])
        scores = -torch.cdist(queries, table.to(queries.device))
        if exclude is not None:
            scores = scores.masked_fill(exclude.to(scores.device), float("-inf"))
        return scores

    def recommend(
        self,
        histories: torch.Tensor,
        exclude: torch.Tensor | None = None,
        log_popularity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate a title per history and ground it: scores ``(B, I)``.

        With ``model.prompt.constrained`` the beams' items come first, in beam order, and every
        other item follows by the distance of its title's embedding to the best beam's. With
        ``model.prompt.popularity_gamma`` > 0 and ``log_popularity``, BIGRec's popularity term
        re-scores the grounding (:func:`~fellrec.models.popularity_grounding.with_popularity`).

        Args:
            histories: Item indices ``(B, H)``, oldest first, left-padded with ``-1``.
            exclude: Optional ``(B, I)`` boolean mask of items to score ``-inf``.
            log_popularity: The items' standardized log training counts ``(I,)``
                (:func:`~fellrec.models.popularity_grounding.standardized_log_popularity`);
                None: grounding alone.
        """
        scores = self._grounded(histories, exclude)
        gamma = self.settings.popularity_gamma
        if gamma > 0 and log_popularity is not None:
            scores = with_popularity(
                scores, log_popularity.to(scores.device), gamma, self.settings.constrained
            )
        return scores

    def _grounded(self, histories: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
        """:meth:`recommend`'s scores before the popularity term."""
        if not self.settings.constrained:
            return self.ground(self.generate_titles(histories), exclude)
        return self.rank_items(self.generate_items(histories), exclude)

    def rank_items(
        self, ranked: Sequence[Sequence[int]], exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``(B, I)`` of constrained beams' items: them first, then the rest by distance.

        Args:
            ranked: Per row, the beams' items in beam order (:meth:`generate_items`).
            exclude: Optional ``(B, I)`` boolean mask of items to score ``-inf``.

        Returns:
            Each row's beam items above every other item, in beam order; every other item by
            the negative L2 distance of its title's embedding to the best beam's.
        """
        table = self.item_embeddings()
        # A row whose beams ended off the catalog (cannot happen under the trie) grounds at 0.
        best = torch.tensor([items[0] if items else 0 for items in ranked], device=table.device)
        scores = -torch.cdist(table[best], table)
        # Beam items above every distance (distances are <= 0), in beam order.
        for row, items in enumerate(ranked):
            for rank, item in enumerate(items):
                scores[row, item] = float(len(items) - rank)
        if exclude is not None:
            scores = scores.masked_fill(exclude.to(scores.device), float("-inf"))
        return scores
