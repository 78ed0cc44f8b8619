"""Drop-ins for the trainers people run today, mapped onto fdiv_ops' core ops (docs/integrations.md).

* ``fdiv_ops.integrations.trl``: TRL 1.x's GKD ``generalized_jsd_loss`` (every reduction, labels,
  ``num_items_in_batch``), a ``GKDTrainer`` that uses it, and the sigmoid DPO loss under TRL's
  ``f_divergence_type`` names and ``f_alpha_divergence_coef``.
* ``fdiv_ops.integrations.fastgen``: FastGen's f-distill divergence names and defaults (10 time bins over the
  noise scheduler's [t_min, t_max], EMA 0) as a configured ``fdiv_ops.FDistillLoss``, and its generator loss.

The core ops keep their own semantics; each integration maps a peer's conventions onto them. Neither module
imports its peer at import time (TRL is imported only when ``GKDTrainer`` is first used).
"""

from . import fastgen, trl

__all__ = ["fastgen", "trl"]
