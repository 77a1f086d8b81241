"""Models: policy LMs, Panacea's SVD-LoRA, reward models."""
