"""Layer 7, study: the workbench, every table and claim, the papers' studies, figures, benchmarks."""
