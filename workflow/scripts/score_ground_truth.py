"""Rule score_ground_truth: one localisation metric on every method of one model, long-format Parquet."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0], snakemake.threads)
maps = {key.removeprefix("maps_"): path for key, path in snakemake.input.items() if key.startswith("maps_")}
pipeline.score_ground_truth(
    snakemake.input.raw, snakemake.input.index, snakemake.input.split, maps, snakemake.wildcards.metric, snakemake.params.score,
    snakemake.output.scores, {"dataset": snakemake.wildcards.dataset, "model": snakemake.wildcards.model},
)
