# camfaith: which attribution map faithfully explains an image classifier, by how much, how sure.
# Flow and layout: docs/ and README.md. Every rule lives in rules/<stage>.smk; logic in src/camfaith.
from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"


# Before the default config is merged under it: a --configfile that names its own datasets describes a
# whole study, whose datasets and models must replace the default ones, not join them.
study = configuration.study_sections(config)


configfile: workflow.source_path("config/config.yaml")


adopt_study_sections(study)
PLAN = prepare_config()
USES_GPU = configuration.cuda_expected(config["device"])


# The software of every rule: the project's image (Dockerfile), used with --sdm apptainer.
container: config["container"]


report: "report/workflow.rst"


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/import.smk"
include: "rules/explain.smk"
include: "rules/score.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
