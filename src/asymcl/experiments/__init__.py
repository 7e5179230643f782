"""Layer 4: experiments over many runs.

- :mod:`asymcl.experiments.sweep`: grid sweeps from a YAML file (resumable, progress + ETA);
- :mod:`asymcl.experiments.study`: Optuna (TPE) search over gamma/eta, shareable between machines;
- :mod:`asymcl.experiments.report`: tables, paired comparisons and figures from run directories;
- :mod:`asymcl.experiments.reproduce`: the benchmark protocol presets of method.md section 5;
- :mod:`asymcl.experiments.stats`: mean/std over seeds and paired t confidence intervals.
"""
