"""Adapting a model you can only query: training through its endpoint with zeroth-order updates, on a budget.

The model's weights are never loaded. Every forward is a call to the endpoint with the 8-bit canvases that
deployment sends; the prompt's gradient is estimated from the answers (:mod:`.spsa`: BlackVIP's SPSA-GC,
in full or in a random subspace), the readout head's is exact on the client; every call is metered and
capped (:mod:`.budget`), faults are retried and a run resumes bit-exactly (:mod:`.trainer`).

    budget.py       QueryLedger, QueryBudget, MeteredEndpoint (count, cap, retry)
    spsa.py         SPSAConfig, SPSA (SPSA-GC), HashedSubspace
    model_input.py  ModelInput: the preprocessing of a model that cannot be opened
    trainer.py      ZerothOrderConfig, train_zeroth_order, load_trained
"""
from .budget import BudgetExhausted, MeteredEndpoint, QueryBudget, QueryLedger, is_transient
from .model_input import ModelInput
from .spsa import SPSA, HashedSubspace, SPSAConfig
from .trainer import RESUMABLE, ZerothOrderConfig, build_adapter, load_trained, train_zeroth_order

__all__ = ["BudgetExhausted", "HashedSubspace", "MeteredEndpoint", "ModelInput", "QueryBudget", "QueryLedger",
           "RESUMABLE", "SPSA", "SPSAConfig", "ZerothOrderConfig", "build_adapter", "is_transient", "load_trained",
           "train_zeroth_order"]
