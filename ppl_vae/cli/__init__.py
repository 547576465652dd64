"""Stage 8 of the flow: the ``ppl-vae`` command line. Nothing in ``ppl_vae`` imports it."""

from ppl_vae.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
