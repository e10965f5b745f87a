"""The core: a model, its loss and its data, evaluated at points of parameter space.

`objective.Objective` is the centre of the library: loss and accuracy at many points
``origin + coords @ directions`` (`Objective.evaluate`), gradients and Hessian-vector
products. Around it: the batch contract (`batching`: any pytree batch, in memory or
streamed), losses as sums with their counts (`losses`), the flat parameter space
(`space`), directions in it (`directions`: random filter-normalised, between models, PCA),
what a forward pass can skip along a subspace (`hoist`), the per-batch autograd graphs kept
for curvature products (`graphs`), the user's code named on the command line (`specs`), and
parameter-sized vectors: chunked float64-accumulated arithmetic (`vectors`), memory budgets
(`memory`), vectors kept in a temporary file (`spill`) and sums across torchrun ranks
(`distributed`).

Layer rule: the core imports nothing from lossprobe but `lossprobe.errors`.
"""

from lossprobe.core.batching import Split, as_data
from lossprobe.core.losses import criterion
from lossprobe.core.objective import Evaluation, Objective, hvp
from lossprobe.core.space import ParamSpace

__all__ = ["Evaluation", "Objective", "ParamSpace", "Split", "as_data", "criterion", "hvp"]
