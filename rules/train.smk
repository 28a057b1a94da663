wildcard_constraints:
    model="[^/]+",


rule train:
    input:
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
        split="results/split/{dataset}/split.parquet",
    output:
        model="results/train/{dataset}/{model}/model.pt",
        history="results/train/{dataset}/{model}/history.parquet",
    params:
        software=SOFTWARE,
        train=train_params,
        # Not an output: it must survive a killed job so the next run resumes from it.
        resume="results/train/{dataset}/{model}/resume.pt",
    log:
        "logs/train/{dataset}/{model}.log",
    benchmark:
        "benchmarks/train/{dataset}/{model}.tsv"
    threads: torch_threads()
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=gpu_slots(),
    script:
        "../workflow/scripts/train.py"


rule evaluate:
    input:
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
        split="results/split/{dataset}/split.parquet",
        model=model_file,
    output:
        scores="results/evaluate/{dataset}/{model}/test_scores.parquet",
    params:
        software=SOFTWARE,
        evaluate=evaluate_params,
    log:
        "logs/evaluate/{dataset}/{model}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{model}.tsv"
    threads: torch_threads()
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_slots(),
    script:
        "../workflow/scripts/evaluate.py"
