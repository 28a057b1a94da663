"""Rule train: train one model; resumes from its per-epoch checkpoint after a kill."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0], snakemake.threads)
pipeline.train_model(
    snakemake.input.raw, snakemake.input.index, snakemake.input.split, snakemake.params.train,
    snakemake.output.model, snakemake.output.history, snakemake.params.resume,
)
