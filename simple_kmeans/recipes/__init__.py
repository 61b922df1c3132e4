"""Recipes on top of the label pipeline and the training library: the demo's pre-training, the
dhubert experiment, the keyword and speaker sweeps. Each module has a ``main`` function that a
thin entry point in ``scripts/`` calls; reruns skip finished steps (``fairseq_ext.base.steps``)
and finished training runs (``fairseq_ext.train_run``)."""
