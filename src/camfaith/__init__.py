"""camfaith: which attribution map faithfully explains an image classifier, by how much, and how sure we are.

The library does the work; the Snakemake rules in ``rules/`` only wire it.
"""

__version__ = "0.1.0"
