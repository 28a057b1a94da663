"""Rule tables: the study's tables (CSV and Markdown) with intervals and paired tests."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.aggregate_tables(
    list(snakemake.input.scores), list(snakemake.input.evaluations), snakemake.params.identities,
    snakemake.params.aggregate, dict(snakemake.output.items()), snakemake.params.skipped,
    dict(zip(snakemake.params.datasets, snakemake.input.indexes, strict=True)), snakemake.params.protocol,
    snakemake.params.replicates,
)
