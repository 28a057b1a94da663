"""Rule sweep_table: per model grid, the members with the highest and lowest HAAS (the study's table)."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.sweep_table(snakemake.input.summary, snakemake.input.classification, snakemake.params.sweep, snakemake.output.csv, snakemake.output.md)
