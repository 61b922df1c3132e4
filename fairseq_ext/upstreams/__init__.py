"""Upstream kinds beyond HuBERT, one per file; importing this package registers them with
:mod:`fairseq_ext.encoder` (which does so itself before any look-up).

* ``pase`` (:mod:`.pase`): the PASE / PASE+ encoder of a ``pase`` checkpoint;
* ``logmel`` (:mod:`.logmel`): the log-Mel front-end, named (``load_upstream("logmel:n_mels=80")``)
  or taken from a trained ``conformer_speaker`` (speaker ID / KWS) checkpoint.
"""

from fairseq_ext.upstreams import logmel, pase  # noqa: F401  (registration)
