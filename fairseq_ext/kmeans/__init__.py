"""k-means for discrete speech units: fitting (sklearn with fairseq's settings, faiss with k-means++
seeding, chunked torch Lloyd on CPU or GPU, streaming over shards), sampling frames from feature
shards, and the joblib model format that fairseq's scripts load. The label pipeline's
``learn_kmeans`` step and the layer probe both use it.
"""
