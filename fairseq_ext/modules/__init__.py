"""fairseq-ext modules."""
