wildcard_constraints:
    dataset="[^/]+",


rule download:
    output:
        raw=directory("results/download/{dataset}"),
    params:
        dataset=dataset_source,
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "benchmarks/download/{dataset}.tsv"
    resources:
        mem_mb=2000,
        runtime=120,
    localrule: True
    script:
        "../workflow/scripts/download.py"


rule index:
    input:
        raw="results/download/{dataset}",
    output:
        index="results/index/{dataset}/index.parquet",
        quarantine="results/index/{dataset}/quarantine.parquet",
    params:
        index=index_params,
    log:
        "logs/index/{dataset}.log",
    benchmark:
        "benchmarks/index/{dataset}.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        "../workflow/scripts/index.py"


rule split:
    input:
        index="results/index/{dataset}/index.parquet",
    output:
        split="results/split/{dataset}/split.parquet",
    params:
        split=split_params,
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "benchmarks/split/{dataset}.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow/scripts/split.py"
