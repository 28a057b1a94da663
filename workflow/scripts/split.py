"""Rule split: grouped, stratified, deterministic train/val/test assignment."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.split(snakemake.input.index, snakemake.params.split, snakemake.output.split)
