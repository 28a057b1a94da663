"""Rule overlays: example test images with each method's map and the ground-truth outline."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
maps = {method: snakemake.input[f"maps_{method}"] for method in snakemake.params.overlay["methods"]}
pipeline.overlay_figure(
    maps, snakemake.input.index, snakemake.input.raw, snakemake.params.overlay, snakemake.output.png, snakemake.output.pdf,
)
