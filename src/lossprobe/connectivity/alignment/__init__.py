"""Permutation alignment of two networks' hidden units.

`spec` holds the types of a permutation spec (imports nothing else of this package);
`groups` the union-find that turns channel classes into groups; `fx` derives a model's
groups from its torch.fx graph and `hf` from the module structure of HF BERT/GPT-2 models;
`matching` applies permutations and searches them (weight and activation matching) and
checks that the aligned model computes the same function. Imports run in that order only.
"""

from lossprobe.connectivity.alignment.matching import (
           CHECK_TOL,
           FEATURES,
           METHODS,
           align,
           apply_permutation,
           check_alignment,
           match_activations,
           match_weights,
           normalise_spec,
           permutation_spec,
           random_permutation,
           select_probes,
)
from lossprobe.connectivity.alignment.spec import Member, PermutationSpec, Probe

__all__ = ["CHECK_TOL", "FEATURES", "METHODS", "Member", "PermutationSpec", "Probe", "align", "apply_permutation",
           "check_alignment", "match_activations", "match_weights", "normalise_spec", "permutation_spec",
           "random_permutation", "select_probes"]
