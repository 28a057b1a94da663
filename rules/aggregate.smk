rule tables:
    input:
        scores=score_files(),
        evaluations=test_scores(),
        indexes=index_files(),
    output:
        classification_csv=report("results/aggregate/tables/classification.csv", category="Tables", labels={"table": "classification"}),
        classification_md="results/aggregate/tables/classification.md",
        summary_csv=report("results/aggregate/tables/summary.csv", category="Tables", labels={"table": "faithfulness summary"}),
        paired_csv=report("results/aggregate/tables/paired_tests.csv", category="Tables", labels={"table": "paired tests"}),
        aopc_md="results/aggregate/tables/aopc.md",
        max_sensitivity_md="results/aggregate/tables/max_sensitivity.md",
        haas_md="results/aggregate/tables/haas.md",
        friedman_csv=report("results/aggregate/tables/friedman.csv", category="Tables", labels={"table": "Friedman and mean ranks"}),
        win_counts_csv=report("results/aggregate/tables/win_counts.csv", category="Tables", labels={"table": "win counts"}),
        study_md="results/aggregate/tables/study_tables.md",
        study_tex="results/aggregate/tables/study_tables.tex",
        study_html=report("results/aggregate/tables/study_tables.html", category="Tables", labels={"table": "AOPC, Max-Sensitivity, HAAS"}),
        verdict_md="results/aggregate/verdict.md",
        verdict_rst="results/aggregate/verdict.rst",
    params:
        aggregate={"seed": config["seed"], "compare": config["aggregate"].get("compare")},
        identities=identities(),
        skipped=skipped_scores(),
        datasets=list(config["datasets"]),
    log:
        "logs/aggregate/tables.log",
    benchmark:
        "benchmarks/aggregate/tables.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/tables.py"


rule figures:
    input:
        scores=score_files(),
        summary="results/aggregate/tables/summary.csv",
        classification="results/aggregate/tables/classification.csv",
        friedman="results/aggregate/tables/friedman.csv",
    output:
        morf_png=report("results/aggregate/figures/morf_curves.png", caption="../report/captions/morf_curves.rst", category="Figures",
                        labels={"figure": "MoRF curves"}),
        morf_pdf="results/aggregate/figures/morf_curves.pdf",
        sensitivity_png=report("results/aggregate/figures/max_sensitivity.png", caption="../report/captions/max_sensitivity.rst",
                               category="Figures", labels={"figure": "Max-Sensitivity"}),
        sensitivity_pdf="results/aggregate/figures/max_sensitivity.pdf",
        accuracy_png=report("results/aggregate/figures/accuracy_vs_aopc.png", caption="../report/captions/accuracy_vs_aopc.rst",
                            category="Figures", labels={"figure": "accuracy vs AOPC"}),
        accuracy_pdf="results/aggregate/figures/accuracy_vs_aopc.pdf",
        accuracy_sensitivity_png=report("results/aggregate/figures/accuracy_vs_max_sensitivity.png",
                                        caption="../report/captions/accuracy_vs_max_sensitivity.rst", category="Figures",
                                        labels={"figure": "accuracy vs Max-Sensitivity"}),
        accuracy_sensitivity_pdf="results/aggregate/figures/accuracy_vs_max_sensitivity.pdf",
        critical_difference_png=report("results/aggregate/figures/critical_difference.png", caption="../report/captions/critical_difference.rst",
                                       category="Figures", labels={"figure": "critical difference"}),
        critical_difference_pdf="results/aggregate/figures/critical_difference.pdf",
    log:
        "logs/aggregate/figures.log",
    benchmark:
        "benchmarks/aggregate/figures.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/figures.py"


rule overlays:
    input:
        unpack(overlay_inputs),
    output:
        png=report("results/aggregate/figures/overlays/{dataset}/{model}.png", caption="../report/captions/overlays.rst", category="Overlays",
                   labels={"dataset": "{dataset}", "model": "{model}"}),
        pdf="results/aggregate/figures/overlays/{dataset}/{model}.pdf",
    params:
        overlay=overlay_params,
    log:
        "logs/aggregate/overlays/{dataset}/{model}.log",
    benchmark:
        "benchmarks/aggregate/overlays/{dataset}/{model}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow/scripts/overlays.py"


rule sweep_table:
    input:
        summary="results/aggregate/tables/summary.csv",
        classification="results/aggregate/tables/classification.csv",
    output:
        csv=report("results/aggregate/tables/haas_sweep.csv", category="Tables", labels={"table": "HAAS sweep extremes"}),
        md="results/aggregate/tables/haas_sweep.md",
    params:
        sweep=sweep_params(),
    log:
        "logs/aggregate/sweep_table.log",
    benchmark:
        "benchmarks/aggregate/sweep_table.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow/scripts/sweep_table.py"
