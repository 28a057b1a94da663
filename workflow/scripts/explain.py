"""Rule explain: raw maps of one method for every test image, into HDF5."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0], snakemake.threads)
pipeline.explain(
    snakemake.input.raw, snakemake.input.index, snakemake.input.split, snakemake.input.model,
    snakemake.wildcards.method, snakemake.params.explain, snakemake.output.maps,
    {"dataset": snakemake.wildcards.dataset, "model": snakemake.wildcards.model},
)
