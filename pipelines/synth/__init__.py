"""Synthetic demo data: weekly clinic exports in the form of CONTRACT.md.

``generate(n_episodes, seed, out_dir, today=None)`` writes them; every model number
lives in :mod:`pipelines.synth.params`, each with its source.
"""

from pipelines.synth.generate import generate

__all__ = ["generate"]
