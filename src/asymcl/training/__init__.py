"""Layer 3: Lightning modules and the two-stage pipeline.

``asymcl.training.methods`` (the method registry), ``asymcl.training.config`` (the typed run
config: defaults, validation), ``asymcl.training.pipeline.run(config, out_dir)`` (a whole run:
the method's stages, test metrics, predictions), and ``asymcl.training.predict`` (class
probabilities for new images from a finished run).
"""
