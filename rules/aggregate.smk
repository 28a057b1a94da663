rule tables:
    input:
        scores=protocol_score_files,
        evaluations=test_scores(),
        indexes=index_files(),
    output:
        classification_csv=table_in_report("results/aggregate/{protocol}/tables/classification.csv", "classification"),
        classification_md="results/aggregate/{protocol}/tables/classification.md",
        summary_csv=table_in_report("results/aggregate/{protocol}/tables/summary.csv", "faithfulness summary"),
        paired_csv=table_in_report("results/aggregate/{protocol}/tables/paired_tests.csv", "paired tests"),
        **metric_tables(),
        friedman_csv=table_in_report("results/aggregate/{protocol}/tables/friedman.csv", "Friedman and mean ranks"),
        win_counts_csv=table_in_report("results/aggregate/{protocol}/tables/win_counts.csv", "win counts"),
        seeds_csv=table_in_report("results/aggregate/{protocol}/tables/seeds.csv", "across training seeds"),
        seeds_md="results/aggregate/{protocol}/tables/seeds.md",
        study_md="results/aggregate/{protocol}/tables/study_tables.md",
        study_tex="results/aggregate/{protocol}/tables/study_tables.tex",
        study_html=table_in_report("results/aggregate/{protocol}/tables/study_tables.html", "AOPC, Max-Sensitivity, HAAS"),
        verdict_md="results/aggregate/{protocol}/verdict.md",
        verdict_rst="results/aggregate/{protocol}/verdict.rst",
    params:
        aggregate={"seed": config["seed"], "compare": config["aggregate"].get("compare")},
        protocol=lambda wildcards: wildcards.protocol,
        replicates=PLAN.replicates,
        identities=identities(),
        skipped=skipped_scores,
        datasets=list(config["datasets"]),
    log:
        "logs/aggregate/{protocol}/tables.log",
    benchmark:
        "benchmarks/aggregate/{protocol}/tables.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/tables.py"


rule figures:
    input:
        scores=protocol_score_files,
        summary="results/aggregate/{protocol}/tables/summary.csv",
        classification="results/aggregate/{protocol}/tables/classification.csv",
        friedman="results/aggregate/{protocol}/tables/friedman.csv",
    output:
        morf_png=figure_in_report("results/aggregate/{protocol}/figures/morf_curves.png", "morf_curves", "MoRF curves"),
        morf_pdf="results/aggregate/{protocol}/figures/morf_curves.pdf",
        running_aopc_png=figure_in_report("results/aggregate/{protocol}/figures/running_aopc.png", "running_aopc", "running AOPC"),
        running_aopc_pdf="results/aggregate/{protocol}/figures/running_aopc.pdf",
        sensitivity_png=figure_in_report("results/aggregate/{protocol}/figures/max_sensitivity.png", "max_sensitivity", "Max-Sensitivity"),
        sensitivity_pdf="results/aggregate/{protocol}/figures/max_sensitivity.pdf",
        accuracy_png=figure_in_report("results/aggregate/{protocol}/figures/accuracy_vs_aopc.png", "accuracy_vs_aopc", "accuracy vs AOPC"),
        accuracy_pdf="results/aggregate/{protocol}/figures/accuracy_vs_aopc.pdf",
        accuracy_sensitivity_png=figure_in_report("results/aggregate/{protocol}/figures/accuracy_vs_max_sensitivity.png", "accuracy_vs_max_sensitivity",
                                                  "accuracy vs Max-Sensitivity"),
        accuracy_sensitivity_pdf="results/aggregate/{protocol}/figures/accuracy_vs_max_sensitivity.pdf",
        critical_difference_png=figure_in_report("results/aggregate/{protocol}/figures/critical_difference.png", "critical_difference", "critical difference"),
        critical_difference_pdf="results/aggregate/{protocol}/figures/critical_difference.pdf",
        localisation_png=figure_in_report("results/aggregate/{protocol}/figures/localisation.png", "localisation", "localisation"),
        localisation_pdf="results/aggregate/{protocol}/figures/localisation.pdf",
    log:
        "logs/aggregate/{protocol}/figures.log",
    benchmark:
        "benchmarks/aggregate/{protocol}/figures.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/figures.py"


rule overlays:
    input:
        unpack(overlay_inputs),
    output:
        png=overlay_in_report("results/aggregate/{protocol}/figures/overlays/{dataset}/{model}.png", "overlays", "examples"),
        pdf="results/aggregate/{protocol}/figures/overlays/{dataset}/{model}.pdf",
        disagreement_png=overlay_in_report("results/aggregate/{protocol}/figures/disagreement/{dataset}/{model}.png", "disagreement", "disagreement"),
        disagreement_pdf="results/aggregate/{protocol}/figures/disagreement/{dataset}/{model}.pdf",
    params:
        overlay=overlay_params,
    log:
        "logs/aggregate/{protocol}/overlays/{dataset}/{model}.log",
    benchmark:
        "benchmarks/aggregate/{protocol}/overlays/{dataset}/{model}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow/scripts/overlays.py"


rule verdict:
    input:
        verdicts_md=expand("results/aggregate/{protocol}/verdict.md", protocol=protocols()),
        verdicts_rst=expand("results/aggregate/{protocol}/verdict.rst", protocol=protocols()),
        paired=expand("results/aggregate/{protocol}/tables/paired_tests.csv", protocol=protocols()),
    output:
        verdict_md="results/aggregate/verdict.md",
        verdict_rst="results/aggregate/verdict.rst",
        protocols_csv=report("results/aggregate/protocols.csv", category="Tables", labels={"table": "protocols compared"}),
        protocols_md="results/aggregate/protocols.md",
    params:
        protocols=protocols(),
    log:
        "logs/aggregate/verdict.log",
    benchmark:
        "benchmarks/aggregate/verdict.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow/scripts/verdict.py"


rule sweep_table:
    input:
        summary="results/aggregate/{protocol}/tables/summary.csv",
        classification="results/aggregate/{protocol}/tables/classification.csv",
    output:
        csv=table_in_report("results/aggregate/{protocol}/tables/haas_sweep.csv", "HAAS sweep extremes"),
        md="results/aggregate/{protocol}/tables/haas_sweep.md",
    params:
        sweep=sweep_params(),
    log:
        "logs/aggregate/{protocol}/sweep_table.log",
    benchmark:
        "benchmarks/aggregate/{protocol}/sweep_table.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow/scripts/sweep_table.py"
