"""The shared base of fairseq-ext: what every layer above it (the fairseq plugin, the label pipeline,
the scripts) uses, and which imports neither torch nor fairseq.

- :mod:`~fairseq_ext.base.errors`: :class:`UserError`, the user-facing error type;
- :mod:`~fairseq_ext.base.cli`: logging, progress bars, the command-line runner;
- :mod:`~fairseq_ext.base.atomic`: outputs written under a temporary name and renamed when complete;
- :mod:`~fairseq_ext.base.manifest`: fairseq manifests (``{split}.tsv``) and audio reading;
- :mod:`~fairseq_ext.base.shards`: shard ranges, NSHARD/RANK from the environment, shard file names;
- :mod:`~fairseq_ext.base.bad_audio`: bad-file handling (``--skip-bad``) and kept-file manifests;
- :mod:`~fairseq_ext.base.steps`: resumable units of work (stamps, locks, a worker pool).
"""
