"""Long-tail / class-imbalance methods for defect-type classification.

* ``LOSSES``: ``(class_counts, **params) -> nn.Module`` with forward ``(logits, targets) -> loss``:
  ce, weighted_ce, focal, cb, balanced_softmax, logit_adjusted; plus ``posthoc_logit_adjust``.
* ``SAMPLERS``: ``(labels, *, num_samples=None, seed=None) -> Sampler``: instance, class_balanced, sqrt.
* ``METHODS``: trainer hooks (``wrap_model`` / ``wrap_transform`` / ``loss`` / ``predict_logits``, see
  ``defectlab.imbalance.method``): plain (any loss, optional post-hoc adjustment), bcl, group_softmax.
* Oversampling: ``smote_features`` (imbalanced-learn SMOTE in a feature space) and ``DeepSMOTE``.
"""

from defectlab.imbalance import bcl, group_softmax  # noqa: F401  (register the methods)
from defectlab.imbalance.bcl import BCLMethod, balanced_contrastive_loss
from defectlab.imbalance.group_softmax import GroupSoftmaxMethod, groups_by_count
from defectlab.imbalance.losses import LOSSES, build_loss, effective_number_weights, posthoc_logit_adjust
from defectlab.imbalance.method import (
    METHODS,
    Method,
    PlainMethod,
    TwoViews,
    build_method,
    check_options,
    split_classifier,
)
from defectlab.imbalance.oversample import DeepSMOTE, deepsmote, smote_features
from defectlab.imbalance.samplers import SAMPLERS, build_sampler, expected_class_probs

__all__ = [
    "LOSSES", "METHODS", "SAMPLERS", "BCLMethod", "DeepSMOTE", "GroupSoftmaxMethod", "Method", "PlainMethod",
    "TwoViews", "balanced_contrastive_loss", "build_loss", "build_method", "check_options", "build_sampler",
    "deepsmote",
    "effective_number_weights", "expected_class_probs", "groups_by_count", "posthoc_logit_adjust",
    "smote_features", "split_classifier",
]
