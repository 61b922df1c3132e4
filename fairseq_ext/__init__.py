"""fairseq-ext: a fairseq user-dir for self-supervised speech representation learning.

Use it with ``fairseq-hydra-train --user-dir fairseq_ext ...`` or import it in Python; either
registers every task, model and criterion below. fairseq's user-dir loader auto-imports only
``tasks/`` and ``models/``, so everything is imported explicitly here.
"""

from fairseq_ext.checkpoint import load_model, register_safe_globals
from fairseq_ext.paths import config_dir

__version__ = "0.1.0"

register_safe_globals()

# --- disentangled HuBERT (tasks, models, criteria) ---
import fairseq_ext.criteria.dhubert  # noqa: F401,E402
import fairseq_ext.criteria.hubert_summable  # noqa: F401,E402
import fairseq_ext.models.dhubert  # noqa: F401,E402
import fairseq_ext.tasks.dhubert_pretraining  # noqa: F401,E402
# --- end disentangled HuBERT ---

# --- PASE (tasks, models, criteria) ---
import fairseq_ext.tasks.pase_pretraining  # noqa: F401,E402
import fairseq_ext.models.pase  # noqa: F401,E402
import fairseq_ext.criteria.pase  # noqa: F401,E402
# --- end PASE ---

# --- speaker classification (tasks, models, criteria) ---
import fairseq_ext.criteria.am_softmax  # noqa: F401,E402
import fairseq_ext.models.conformer_speaker  # noqa: F401,E402
import fairseq_ext.tasks.speaker_classification  # noqa: F401,E402
# --- end speaker classification ---

__all__ = ["config_dir", "load_model", "register_safe_globals", "__version__"]
