"""Rule verdict: the report's first page, every protocol's verdict, and where the protocols disagree."""
from camfaith import logs, pipeline

logs.setup(snakemake.log[0])
pipeline.verdict_page(
    dict(zip(snakemake.params.protocols, snakemake.input.verdicts_md, strict=True)),
    dict(zip(snakemake.params.protocols, snakemake.input.verdicts_rst, strict=True)),
    dict(zip(snakemake.params.protocols, snakemake.input.paired, strict=True)),
    dict(snakemake.output.items()),
)
