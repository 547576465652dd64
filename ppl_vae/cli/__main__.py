"""``python -m ppl_vae.cli``: the ``ppl-vae`` command (what torchrun and SLURM launch)."""

import sys

from ppl_vae.cli.main import main

sys.exit(main())
