"""From crowd labels to local and global explanations (normalise → Sentence-BERT → group → name → score).

Entry points: :func:`read_labels` (game export), :func:`process_labels` (against a bundle),
:func:`load_processed`, :func:`local_explanations`, :func:`global_explanations`, :func:`concept_trends`,
and :func:`featurelens.labels.report.write_report`.
"""

from featurelens.labels.explain import (
    GlobalExplanation,
    GlobalLabel,
    LocalCluster,
    LocalExplanation,
    Trend,
    best_labels,
    concept_trends,
    global_explanations,
    local_explanations,
    merge_maps,
    merge_transitive,
    merged_scores,
)
from featurelens.labels.group import GroupParams, cluster_embeddings, representative_word
from featurelens.labels.io import (
    EXPORT_COLUMNS,
    OPTIONAL_COLUMNS,
    LabelRecord,
    LabelsError,
    read_labels,
    write_labels_csv,
)
from featurelens.labels.normalise import NormaliseParams, normalise_label
from featurelens.labels.pipeline import LabelParams, ProcessedLabels, load_processed, process_labels
from featurelens.labels.score import ClusterScore, ScoreParams, label_score
from featurelens.labels.stats import MapStats, map_stats
from featurelens.labels.stopwords import stop_word_list

__all__ = [
    "EXPORT_COLUMNS",
    "OPTIONAL_COLUMNS",
    "ClusterScore",
    "GlobalExplanation",
    "GlobalLabel",
    "GroupParams",
    "LabelParams",
    "LabelRecord",
    "LabelsError",
    "LocalCluster",
    "LocalExplanation",
    "MapStats",
    "NormaliseParams",
    "ProcessedLabels",
    "ScoreParams",
    "Trend",
    "best_labels",
    "cluster_embeddings",
    "concept_trends",
    "global_explanations",
    "label_score",
    "load_processed",
    "local_explanations",
    "map_stats",
    "merge_maps",
    "merge_transitive",
    "merged_scores",
    "normalise_label",
    "process_labels",
    "read_labels",
    "representative_word",
    "stop_word_list",
    "write_labels_csv",
]
