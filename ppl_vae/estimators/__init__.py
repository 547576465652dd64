"""Stage 3 of the flow: estimators. One ELBO gradient estimator per module, behind Pyro's ELBO
interface (``loss``, ``loss_and_grads``, ``differentiable_loss``), and the registry that names
them (:mod:`~ppl_vae.estimators.registry`). What an estimator can do is data in its
:class:`~ppl_vae.estimators.registry.EstimatorSpec`; no code outside this package compares an
estimator's name.
"""
