"""A corpus of Pyro programs written the way Pyro's examples and tutorials write them.

Each module is a plain Pyro program (no ppl-vae import) plus a few facts the tests need:

- ``make(dtype)`` -> ``(model, guide)``, fresh parameters;
- ``data(dtype)`` -> the tensors the programs are called with (a tuple), tiny;
- ``DATA_PLATE``: the plate over data points ppl-vae must find on its own;
- ``ESTIMATORS``: the registered estimators that apply (the others are refused, see
  ``tests/test_programs_shapes.py``);
- ``ELBO_OPTIONS``: keyword arguments for the ELBO (``max_plate_nesting`` where enumeration
  needs it);
- ``local_scale(num_data, batch_size)``: the scale a data-plate site must carry in training.
"""

from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

# Plain Pyro's counterpart of each registered estimator, for the value of its loss with one
# particle: iwae, vimco and dreg with K = 1 are the ELBO, stl changes only the gradient, score is
# TraceGraph_ELBO's estimator. A new estimator must be added here (the tests fail until it is).
COUNTERPART = {
    "mc": Trace_ELBO, "analytic": TraceMeanField_ELBO, "enum": TraceEnum_ELBO,
    "score": TraceGraph_ELBO, "tracegraph": TraceGraph_ELBO, "iwae": Trace_ELBO,
    "stl": Trace_ELBO, "vimco": Trace_ELBO, "dreg": Trace_ELBO,
}
