wildcard_constraints:
    metric=metric_pattern(),
    protocol=protocol_pattern(),


rule score:
    wildcard_constraints:
        metric=forward_metric_pattern(),
    input:
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
        split="results/split/{dataset}/split.parquet",
        model=model_file,
        maps="results/explain/{dataset}/{model}/{method}.h5",
    output:
        scores="results/score/{protocol}/{dataset}/{model}/{method}/{metric}.parquet",
    params:
        software=SOFTWARE,
        score=score_params,
    log:
        "logs/score/{protocol}/{dataset}/{model}/{method}/{metric}.log",
    benchmark:
        "benchmarks/score/{protocol}/{dataset}/{model}/{method}/{metric}.tsv"
    threads: torch_threads()
    resources:
        mem_mb=score_mem_mb,
        runtime=720,
        gpu=gpu_slots(),
    script:
        "../workflow/scripts/score.py"


rule score_ground_truth:
    wildcard_constraints:
        metric=ground_truth_metric_pattern(),
    input:
        unpack(ground_truth_maps),
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
        split="results/split/{dataset}/split.parquet",
    output:
        scores="results/score/{protocol}/{dataset}/{model}/{metric}.parquet",
    params:
        software=SOFTWARE,
        score=ground_truth_params,
    log:
        "logs/score/{protocol}/{dataset}/{model}/{metric}.log",
    benchmark:
        "benchmarks/score/{protocol}/{dataset}/{model}/{metric}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        "../workflow/scripts/score_ground_truth.py"
