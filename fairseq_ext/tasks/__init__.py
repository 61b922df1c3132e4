"""fairseq-ext tasks."""
