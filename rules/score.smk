wildcard_constraints:
    metric=metric_pattern(),
    protocol=protocol_pattern(),


rule score:
    input:
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
        split="results/split/{dataset}/split.parquet",
        model="results/train/{dataset}/{model}/model.pt",
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
