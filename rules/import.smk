# A model brought from elsewhere (models.<dataset>.<model>.model.source other than torchvision): its
# checkpoint is built, matched to the data's classes and checked once, instead of the train stage.


rule import_model:
    input:
        unpack(import_inputs),
        raw="results/download/{dataset}",
        index="results/index/{dataset}/index.parquet",
    output:
        record="results/import/{dataset}/{model}/model.json",
    params:
        software=SOFTWARE,
        model=import_params,
    log:
        "logs/import/{dataset}/{model}.log",
    benchmark:
        "benchmarks/import/{dataset}/{model}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/import_model.py"
