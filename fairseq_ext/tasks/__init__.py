"""fairseq-ext tasks; importing this package registers the whole plugin with fairseq.

fairseq's user-dir loader imports only ``tasks/`` and ``models/``, so the criteria are imported
here too, and fairseq's pickled classes are allow-listed for ``torch.load`` (checkpoint resume).
"""

from fairseq_ext.checkpoint import register_safe_globals

register_safe_globals()

from fairseq_ext.criteria import am_softmax, dhubert, hubert_summable, pase, phone_ctc  # noqa: F401,E402
from fairseq_ext.models import conformer_speaker, dhubert as dhubert_model, pase as pase_model  # noqa: F401,E402
from fairseq_ext.models import phone_recognizer  # noqa: F401,E402
from fairseq_ext.tasks import dhubert_pretraining, pase_pretraining, speaker_classification  # noqa: F401,E402
from fairseq_ext.tasks import phone_recognition  # noqa: F401,E402
