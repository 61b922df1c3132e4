"""fairseq-ext models."""
