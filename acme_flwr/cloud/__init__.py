"""Cloud tier (ACME Part I): the elastic ViT, the backbone registry, the elastic-backbone stages and PFG selection.

``elastic_vit`` is the model (one model, one file), ``models`` its registry, ``stages`` the fine-tuning, importance
re-ordering and DynaBERT-style distillation that make it elastic, ``pfg`` the Pareto-front selection of each device
class's sub-backbone and ``cost_models`` the size/latency/energy models it trades accuracy against.
"""
