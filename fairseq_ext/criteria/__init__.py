"""fairseq-ext criteria."""
