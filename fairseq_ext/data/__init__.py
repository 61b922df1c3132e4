"""fairseq-ext data."""
