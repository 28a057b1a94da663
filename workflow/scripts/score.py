"""Rule score: one metric on one method's maps, long-format Parquet."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0], snakemake.threads)
pipeline.score(
    snakemake.input.raw, snakemake.input.index, snakemake.input.split, snakemake.input.model, snakemake.input.maps,
    snakemake.wildcards.metric, snakemake.params.score, snakemake.output.scores,
    {"dataset": snakemake.wildcards.dataset, "model": snakemake.wildcards.model},
)
