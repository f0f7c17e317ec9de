"""The output stage: the layout of a pruned model folder (file names and readers, at the bottom),
saving it, its model card, its visual report, and measuring a model (perplexity, lm-eval)."""
