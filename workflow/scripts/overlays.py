"""Rule overlays: example test images with each method's map, its scores and the ground-truth outline,
and the images on which the compared pair of methods disagrees most."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
maps = {method: snakemake.input[f"maps_{method}"] for method in snakemake.params.overlay["methods"]}
pipeline.overlay_figures(
    maps, list(snakemake.input.scores), snakemake.input.index, snakemake.input.raw, snakemake.params.overlay, dict(snakemake.output.items()),
)
