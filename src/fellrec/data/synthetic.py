"""A built-in synthetic book-shop dataset with text, sequential and popularity signal.

The generator is meant to exercise a text recommender end to end without downloads:

* **Items** have readable English titles built from a category-specific vocabulary ("Secrets of
  the Mediterranean Kitchen", "The Detective's Last Alibi"), so the category is visible in the
  text. Some items form series ("..., Part 1", "..., Part 2", ...).
* **Users** have latent tastes: one or two favourite categories (partly driven by their age
  ``segment``) mixed with a sparse Dirichlet background. They stay in a category for runs, follow
  a series to its next part, and pick items with a mild Zipf popularity within a category; now
  and then they take a global bestseller instead (categories differ in popularity too).
* **Timestamps** are global: users are active over overlapping windows that mostly reach the end
  of the timeline, so a global temporal split leaves many users in validation and test.

A popularity baseline is therefore informative but clearly beaten by a content model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fellrec.data.schema import RawDataset

#: Per category: the adjectives and nouns its titles are built from (no word is shared between
#: categories, so a title's words identify its category).
VOCABULARY: dict[str, tuple[str, str]] = {
    "Science Fiction": (
        "Galactic Quantum Stellar Robotic Cosmic Orbital Alien Cybernetic",
        "Starship Android Nebula Colony Empire Wormhole Planet Frontier Signal Voyager Reactor",
    ),
    "Mystery": (
        "Silent Hidden Midnight Vanishing Crooked Shadowed Poisoned Missing",
        "Detective Alibi Clue Witness Inspector Murder Case Suspect Cipher Manor Confession Butler",
    ),
    "Cooking": (
        "Mediterranean Rustic Spicy Homemade Seasonal Savory Vegetarian Italian",
        "Kitchen Recipes Baking Soups Pasta Spices Bread Feasts Dinners Desserts Sauces Pantry",
    ),
    "Travel": (
        "Wandering Coastal Alpine Tropical Nomadic Scenic Remote Backpacking",
        "Journey Islands Roads Passport Voyage Trails Cities Coastline Atlas Expedition Harbors",
    ),
    "History": (
        "Ancient Medieval Imperial Forgotten Victorian Roman Revolutionary Colonial",
        "Kings Empires Chronicles Dynasty Battles Castles Pharaohs Crusades Archives Centuries",
    ),
    "Romance": (
        "Tender Passionate Enchanted Summer Moonlit Whispered Forbidden Sweet",
        "Heart Kiss Love Wedding Bride Promise Affair Desire Sweetheart Romance Embrace Valentine",
    ),
    "Sports": (
        "Winning Championship Olympic Athletic Fearless Undefeated Professional Competitive",
        "Goal Season Coach Champions Marathon Playoffs Stadium Team Victory Training Tournament",
    ),
    "Gardening": (
        "Blooming Organic Perennial Backyard Herbal Flowering Evergreen Lush",
        "Garden Seeds Orchards Compost Tulips Vegetables Hedges Greenhouse Soil Bulbs Shrubs",
    ),
    "Music": (
        "Acoustic Melodic Harmonic Jazz Symphonic Rhythmic Classical Soulful",
        "Guitar Symphony Piano Songs Chords Orchestra Ballads Melody Drums Concert Blues Choir",
    ),
    "Business": (
        "Profitable Strategic Agile Corporate Lean Entrepreneurial Financial Global",
        "Leadership Markets Startups Investing Growth Strategy Sales Capital Branding Profits",
    ),
    "Health": (
        "Healthy Mindful Balanced Energetic Restful Holistic Active Calm",
        "Wellness Nutrition Fitness Sleep Meditation Healing Yoga Habits Immunity Posture",
    ),
    "Art": (
        "Abstract Impressionist Vivid Sculpted Modernist Painted Colorful Surreal",
        "Canvas Portraits Sketches Watercolors Gallery Murals Palette Studio Sculptures Frescoes",
    ),
}
#: Title patterns; ``{a}`` is an adjective, ``{n}`` and ``{m}`` are nouns of the same category.
TEMPLATES = (
    "The {a} {n}",
    "Secrets of the {a} {n}",
    "The {n} and the {m}",
    "Beyond the {a} {n}",
    "The {n}'s Last {m}",
    "A Year of {a} {n}",
    "Tales of the {a} {n}",
    "The Art of {a} {n}",
)
#: Values of the ``segment`` user attribute and their shares.
SEGMENTS = ("18-24", "25-34", "35-49", "50-64", "65+")
SEGMENT_SHARES = (0.2, 0.3, 0.25, 0.15, 0.1)

START_TIME = 1_600_000_000  # 2020-09-13, an arbitrary origin for the timestamps
TIMELINE_SECONDS = 2 * 365 * 24 * 3600

# Behaviour knobs (probabilities per step and shape parameters), fixed so the data set is stable.
SERIES_SHARE = 0.35  # chance that an item slot starts a series rather than a stand-alone title
FOLLOW_SERIES = 0.75  # chance to read Part n+1 right after Part n
STAY_IN_CATEGORY = 0.55  # chance to stay in the current category otherwise
LATER_PART_WEIGHT = 0.2  # popularity discount of Part 2+ when picked outside the series habit
ZIPF_EXPONENT = 1.1  # within-category popularity: weight of rank r is 1 / r ** exponent
CATEGORY_ZIPF_EXPONENT = 0.8  # some categories are more popular than others
BESTSELLER = 0.15  # chance of a step that ignores taste and picks by global popularity
FAVOURITE_MASS = 0.75  # share of a user's taste on their favourite categories


@dataclass(frozen=True)
class _Catalog:
    """Items of the synthetic shop, indexed ``0..num_items-1``."""

    titles: list[str]
    category: np.ndarray  # category index of each item
    next_part: np.ndarray  # item index of the next part of the series, -1 if none
    weight: np.ndarray  # unnormalised popularity of each item within its category
    category_share: np.ndarray  # popularity of each category, sums to 1

    @property
    def global_weight(self) -> np.ndarray:
        """Unnormalised popularity of each item across the whole catalog."""
        return self.weight * self.category_share[self.category]


def generate_synthetic(
    num_users: int = 600,
    num_items: int = 400,
    num_categories: int = 8,
    interactions_per_user: tuple[int, int] = (15, 35),
    seed: int = 0,
) -> RawDataset:
    """Generate the synthetic dataset; the same arguments always give the same data.

    Args:
        num_users: Number of users.
        num_items: Number of items in the catalog.
        num_categories: Number of categories, at most ``len(VOCABULARY)`` (12).
        interactions_per_user: Inclusive range of each user's number of interactions (each
            item at most once per user).
        seed: Seed of every random choice.

    Returns:
        A :class:`RawDataset` named ``"synthetic"`` with ``users`` holding a ``segment`` column.
        Items nobody consumed stay in the catalog (indexing drops them).

    Raises:
        ValueError: If an argument is out of range.
    """
    low, high = interactions_per_user
    _check_arguments(num_users, num_items, num_categories, low, high)
    rng = np.random.default_rng(seed)
    names = list(VOCABULARY)[:num_categories]
    catalog = _make_catalog(rng, num_items, names)
    segments = rng.choice(len(SEGMENTS), size=num_users, p=SEGMENT_SHARES)
    tastes = _make_tastes(rng, segments, catalog.category_share)
    lengths = rng.integers(low, high + 1, size=num_users)
    sequences = [
        _make_sequence(rng, catalog, taste, int(n))
        for taste, n in zip(tastes, lengths, strict=True)
    ]
    timestamps = [_make_timestamps(rng, len(s)) for s in sequences]
    return _assemble(catalog, names, segments, sequences, timestamps)


def _check_arguments(
    num_users: int, num_items: int, num_categories: int, low: int, high: int
) -> None:
    if not 1 <= num_categories <= len(VOCABULARY):
        raise ValueError(f"num_categories must be in 1..{len(VOCABULARY)}, got {num_categories}")
    if num_users < 1 or num_items < num_categories:
        raise ValueError(
            f"need num_users >= 1 and num_items >= num_categories, got num_users={num_users}, "
            f"num_items={num_items}, num_categories={num_categories}"
        )
    if not 1 <= low <= high <= num_items:
        raise ValueError(
            "interactions_per_user must be (low, high) with 1 <= low <= high <= num_items, got "
            f"({low}, {high}) with num_items={num_items}"
        )


def _make_catalog(rng: np.random.Generator, num_items: int, names: list[str]) -> _Catalog:
    """Titles, categories, series links and popularity of every item."""
    # Categories in equal shares, shuffled so item ids do not reveal them.
    category = rng.permutation(np.arange(num_items) % len(names))
    titles = [""] * num_items
    next_part = np.full(num_items, -1, dtype=np.int64)
    weight = np.empty(num_items, dtype=np.float64)
    used: set[str] = set()
    for c, name in enumerate(names):
        members = np.flatnonzero(category == c)
        ranks = rng.permutation(len(members)) + 1
        weight[members] = 1.0 / ranks**ZIPF_EXPONENT
        start = 0
        while start < len(members):
            size = int(rng.integers(2, 4)) if rng.random() < SERIES_SHARE else 1
            part = members[start : start + size]
            base = _unique_title(rng, name, used)
            if len(part) == 1:
                titles[part[0]] = base
            else:
                for k, item in enumerate(part):
                    titles[item] = f"{base}, Part {k + 1}"
                next_part[part[:-1]] = part[1:]
                weight[part[1:]] *= LATER_PART_WEIGHT
            start += size
    share = 1.0 / (rng.permutation(len(names)) + 1) ** CATEGORY_ZIPF_EXPONENT
    return _Catalog(
        titles=titles,
        category=category,
        next_part=next_part,
        weight=weight,
        category_share=share / share.sum(),
    )


def _unique_title(rng: np.random.Generator, category: str, used: set[str]) -> str:
    """A title of the category not used yet (a volume number is added once combinations run low)."""
    adjectives, nouns = (words.split() for words in VOCABULARY[category])
    title = ""
    for _ in range(50):
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        noun, other = rng.choice(len(nouns), size=2, replace=False)
        title = template.format(
            a=adjectives[rng.integers(len(adjectives))], n=nouns[noun], m=nouns[other]
        )
        if title not in used:
            break
    volume = 2
    unique = title
    while unique in used:
        unique = f"{title}, Volume {volume}"
        volume += 1
    used.add(unique)
    return unique


def _make_tastes(
    rng: np.random.Generator, segments: np.ndarray, category_share: np.ndarray
) -> np.ndarray:
    """Each user's category distribution, shape ``(num_users, num_categories)``."""
    num_categories = len(category_share)
    # Each segment leans towards some categories, which makes attribute partitions non-iid.
    segment_pref = rng.dirichlet(np.ones(num_categories), size=len(SEGMENTS))
    tastes = np.empty((len(segments), num_categories))
    for user, segment in enumerate(segments):
        pick = 0.5 * segment_pref[segment] + 0.5 * category_share
        num_favourites = min(int(rng.integers(1, 3)), num_categories)
        favourites = rng.choice(num_categories, size=num_favourites, replace=False, p=pick)
        taste = (1 - FAVOURITE_MASS) * rng.dirichlet(np.full(num_categories, 0.3))
        taste[favourites] += FAVOURITE_MASS * rng.dirichlet(np.full(num_favourites, 2.0))
        tastes[user] = taste / taste.sum()
    return tastes


def _make_sequence(
    rng: np.random.Generator, catalog: _Catalog, taste: np.ndarray, length: int
) -> np.ndarray:
    """One user's chronological items (no repeats)."""
    available = np.ones(len(catalog.titles), dtype=bool)
    sequence: list[int] = []
    category = -1
    for _ in range(length):
        last = sequence[-1] if sequence else -1
        follow = catalog.next_part[last] if last >= 0 else -1
        if follow >= 0 and available[follow] and rng.random() < FOLLOW_SERIES:
            item = int(follow)
        elif rng.random() < BESTSELLER:
            item = _pick(rng, np.flatnonzero(available), catalog.global_weight)
        else:
            category = _next_category(rng, catalog, taste, available, category)
            candidates = np.flatnonzero(available & (catalog.category == category))
            item = _pick(rng, candidates, catalog.weight)
        available[item] = False
        sequence.append(item)
        category = int(catalog.category[item])
    return np.asarray(sequence, dtype=np.int64)


def _pick(rng: np.random.Generator, candidates: np.ndarray, weight: np.ndarray) -> int:
    """One of ``candidates`` drawn with probability proportional to its ``weight``."""
    w = weight[candidates]
    return int(rng.choice(candidates, p=w / w.sum()))


def _next_category(
    rng: np.random.Generator,
    catalog: _Catalog,
    taste: np.ndarray,
    available: np.ndarray,
    current: int,
) -> int:
    """Stay in the current category for a run, otherwise draw one from the taste."""
    left = np.bincount(catalog.category[available], minlength=len(taste))
    if current >= 0 and left[current] > 0 and rng.random() < STAY_IN_CATEGORY:
        return current
    # Categories the user has exhausted cannot be drawn.
    p = np.where(left > 0, taste, 0.0)
    if p.sum() == 0:
        p = (left > 0).astype(np.float64)
    return int(rng.choice(len(taste), p=p / p.sum()))


def _make_timestamps(rng: np.random.Generator, length: int) -> np.ndarray:
    """Distinct increasing timestamps inside a user's activity window.

    Windows start in the first half of the timeline and end in its last quarter, so most users
    overlap the late validation and test periods of a global temporal split.
    """
    start = int(rng.uniform(0.0, 0.5) * TIMELINE_SECONDS)
    end = int(rng.uniform(0.75, 1.0) * TIMELINE_SECONDS)
    offsets = np.sort(rng.choice(end - start, size=length, replace=False))
    return START_TIME + start + offsets.astype(np.int64)


def _assemble(
    catalog: _Catalog,
    names: list[str],
    segments: np.ndarray,
    sequences: list[np.ndarray],
    timestamps: list[np.ndarray],
) -> RawDataset:
    """Build the pandas frames with string ids."""
    width_u = len(str(len(sequences)))
    width_i = len(str(len(catalog.titles)))
    user_ids = [f"u{u + 1:0{width_u}d}" for u in range(len(sequences))]
    item_ids = [f"i{i + 1:0{width_i}d}" for i in range(len(catalog.titles))]
    lengths = [len(s) for s in sequences]
    interactions = pd.DataFrame(
        {
            "user_id": np.repeat(user_ids, lengths),
            "item_id": np.asarray(item_ids)[np.concatenate(sequences)],
            "timestamp": np.concatenate(timestamps).astype(np.int64),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": catalog.titles,
            "categories": [(names[c],) for c in catalog.category],
        }
    )
    users = pd.DataFrame({"user_id": user_ids, "segment": [SEGMENTS[s] for s in segments]})
    return RawDataset(name="synthetic", interactions=interactions, items=items, users=users)
