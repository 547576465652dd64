"""ELBO gradient estimators that Pyro does not ship, one per module (see ``ppl_vae.elbo``)."""
