"""Model families: plain Keras builders and the KerasTuner HyperModels that search them."""
