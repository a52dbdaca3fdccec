"""mvsim: the multi-view theory of ensembles and distillation, runnable."""
