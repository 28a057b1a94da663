"""Rule evaluate: classification scores of one model on the test split."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0], snakemake.threads)
pipeline.evaluate(
    snakemake.input.raw, snakemake.input.index, snakemake.input.split, snakemake.input.model,
    snakemake.params.evaluate, snakemake.output.scores,
)
