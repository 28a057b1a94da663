"""Rule import_model: build a model brought from elsewhere, check it against the data, write its import record."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.import_model(snakemake.input.raw, snakemake.input.index, snakemake.params.model, snakemake.output.record,
                      {"dataset": snakemake.wildcards.dataset, "model": snakemake.wildcards.model})
