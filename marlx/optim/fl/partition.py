"""Client data: non-IID Dirichlet label partitioning and capability tiers."""

from __future__ import annotations

import numpy as np

from marlx.errors import MarlxError


def dirichlet_partition(
    labels, num_clients: int, alpha: float, seed: int = 0, min_size: int = 2, max_tries: int = 100
) -> list[np.ndarray]:
    """Split sample indices over ``num_clients`` with per-class proportions drawn from Dir(alpha).

    The usual label-skew scheme (Hsu et al. 2019, used by FedLUAR's code with alpha = 0.1): for every class,
    draw client shares ~ Dirichlet(alpha * 1) and cut that class's shuffled indices accordingly. Small alpha
    gives each client few classes; alpha -> inf approaches an IID split. Draws again (up to ``max_tries``)
    until every client holds at least ``min_size`` samples. Returns one sorted index array per client;
    together they are a partition of ``range(len(labels))``.
    """
    labels = np.asarray(labels)
    if num_clients < 1 or alpha <= 0:
        raise MarlxError(f"dirichlet_partition needs num_clients >= 1 and alpha > 0, got {num_clients}, {alpha}")
    if num_clients * min_size > len(labels):
        raise MarlxError(f"{len(labels)} samples cannot give {num_clients} clients {min_size} samples each")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise MarlxError(
        f"no Dirichlet(alpha={alpha}) split gave all {num_clients} clients >= {min_size} samples in {max_tries} "
        "tries; raise alpha, lower min_size or use fewer clients"
    )


def assign_tiers(num_clients: int, fractions: dict[str, float], seed: int = 0) -> list[str]:
    """Give each client a capability tier (``{"strong": 0.2, "moderate": 0.3, "weak": 0.5}``).

    Counts are the fractions times ``num_clients`` rounded by largest remainder (so they sum exactly);
    which client gets which tier is a seeded shuffle.
    """
    if not fractions:
        return ["strong"] * num_clients
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise MarlxError(f"tier fractions must be >= 0 with a positive sum, got {fractions}")
    names = list(fractions)
    exact = np.array([fractions[n] / total * num_clients for n in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: num_clients - counts.sum()]:
        counts[i] += 1
    tiers = [n for n, c in zip(names, counts) for _ in range(c)]
    order = np.random.default_rng(seed).permutation(num_clients)
    return [tiers[i] for i in order]
