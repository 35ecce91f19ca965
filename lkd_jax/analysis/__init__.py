"""Analysis tools: effective receptive fields (erf), training curves (curves), their figures (plots)."""
