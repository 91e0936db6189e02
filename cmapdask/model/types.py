"""Option types shared by the functional API and the CLI (one definition each).

The CLI builds its ``choices=`` from these with :func:`typing.get_args`, so a new value is
added in one place.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Space", "SimilarityMetric", "ConnectivityMetric"]

#: Feature space (ALGORITHMS.md §0): ``"landmark"`` (the 978 measured genes), ``"bing"``
#: (landmarks and best inferred genes, CLUE's default for queries), ``"all"`` (every gene).
Space = Literal["landmark", "bing", "all"]

#: Signature x signature similarity: Pearson, Spearman or cosine over the space's genes.
SimilarityMetric = Literal["pearson", "spearman", "cosine"]

#: Connectivity score of a query (ALGORITHMS.md §2-3): ``"wtcs"`` (weighted) or ``"cs"``
#: (unweighted Kolmogorov-Smirnov).
ConnectivityMetric = Literal["wtcs", "cs"]
