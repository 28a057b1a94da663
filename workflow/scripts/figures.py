"""Rule figures: MoRF curves, Max-Sensitivity against radius, accuracy against AOPC."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.aggregate_figures(
    list(snakemake.input.scores), snakemake.input.summary, snakemake.input.classification, dict(snakemake.output.items()),
)
