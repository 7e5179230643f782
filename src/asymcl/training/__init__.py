"""Layer 3: Lightning modules and the two-stage pipeline.

``asymcl.training.config`` (defaults, validation), ``asymcl.training.pipeline.run(config, out_dir)``
(a whole run: stage 1, stage 2 or the ce baseline, test metrics, predictions), and
``asymcl.training.predict`` (class probabilities for new images from a finished run).
"""
