"""The data model every capability shares (DEVELOPERS.md, "The in-memory data model").

- :mod:`.types`: the option types (``Space``, ``SimilarityMetric``, ``ConnectivityMetric``)
  as ``Literal`` types; the CLI takes its choices from them (``typing.get_args``).
- :mod:`.spaces`: the one feature-space rule (:func:`feature_genes`).
- :mod:`.missing`: what a missing metadata value is (:func:`is_missing`).
- :mod:`.checks`: the signature dataset check and the name a dataset goes by.
- :mod:`.provenance`: the one provenance record (:func:`provenance_record`).
"""

import cmapdask.accessor  # noqa: F401  (ds.cmap wherever cmapdask makes a dataset)
from cmapdask.model.checks import check_signatures, dataset_name
from cmapdask.model.missing import is_missing, labels
from cmapdask.model.provenance import provenance_record
from cmapdask.model.spaces import feature_genes, landmark_ids
from cmapdask.model.types import ConnectivityMetric, SimilarityMetric, Space

__all__ = [
    "Space",
    "SimilarityMetric",
    "ConnectivityMetric",
    "feature_genes",
    "landmark_ids",
    "is_missing",
    "labels",
    "check_signatures",
    "dataset_name",
    "provenance_record",
]
