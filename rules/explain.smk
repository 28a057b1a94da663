wildcard_constraints:
    method=method_pattern(),


rule explain:
    input:
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
        split="results/split/{dataset}/split.parquet",
        model=model_file,
    output:
        maps="results/explain/{dataset}/{model}/{method}.h5",
    params:
        software=SOFTWARE,
        explain=explain_params,
    log:
        "logs/explain/{dataset}/{model}/{method}.log",
    benchmark:
        "benchmarks/explain/{dataset}/{model}/{method}.tsv"
    threads: torch_threads()
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_slots(),
    script:
        "../workflow/scripts/explain.py"
