"""Physical compression: the channel graph of a model (:mod:`.graph`, derived from its jaxpr;
traced once per structure, :mod:`.structure`), the export of a pruned model as a smaller
dense one (:mod:`.export`) and of any run directory (:mod:`.run_export`,
``experiments/export.py``)."""
from repr_jax.compress.export import (ExportError, Exported, export, export_model, export_state, load_exported,
                                      logits, max_logit_difference, removable, save_exported)
from repr_jax.compress.graph import FIXED, ChannelGraph, GraphError, Use, trace_channel_graph
from repr_jax.compress.structure import channel_graph, forget_graphs, variable_shapes

__all__ = ["FIXED", "ChannelGraph", "ExportError", "Exported", "GraphError", "Use", "channel_graph",
           "export", "export_model", "export_state", "forget_graphs", "load_exported", "logits", "max_logit_difference",
           "removable", "save_exported", "trace_channel_graph", "variable_shapes"]
