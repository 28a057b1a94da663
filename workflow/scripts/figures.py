"""Rule figures: MoRF curves, Max-Sensitivity against radius, accuracy against AOPC and Max-Sensitivity, CD diagrams."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.aggregate_figures(
    list(snakemake.input.scores), snakemake.input.summary, snakemake.input.classification, dict(snakemake.output.items()),
    snakemake.input.friedman,
)
