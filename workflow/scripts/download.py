"""Rule download: materialise a dataset (the synthetic one is generated from its seed)."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.download(snakemake.params.dataset, snakemake.output.raw)
