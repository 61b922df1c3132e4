"""The label pipeline: manifests, feature dumping, k-means, labels, quality report (fairseq layout)."""
