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
