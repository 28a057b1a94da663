# camfaith: which attribution map faithfully explains an image classifier, by how much, how sure.
# Flow and layout: docs/ and README.md. Every rule lives in rules/<stage>.smk; logic in src/camfaith.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


validate_config()


report: "report/workflow.rst"


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/explain.smk"
include: "rules/score.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
