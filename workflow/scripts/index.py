"""Rule index: one Parquet row per image; unreadable images listed in the quarantine table."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.index(snakemake.input.raw, snakemake.params.index, snakemake.output.index, snakemake.output.quarantine)
