"""Stage 2 of the flow: programs. What ppl-vae needs to know about a user's Pyro model and guide.

- :mod:`~ppl_vae.programs.handlers`: effect handlers put around the programs (data-plate scale);
- :mod:`~ppl_vae.programs.checks`: the pre-flight checks run before any training step;
- :mod:`~ppl_vae.programs.util`: facts read off one run (plate nesting, dtype and device);
- :mod:`~ppl_vae.programs.registry`: the zoo and ``file.py:name`` programs by name;
- :mod:`~ppl_vae.programs.nn`, :mod:`~ppl_vae.programs.distributions`: building blocks of the zoo.
"""
