"""Dropout rates that the comparison cannot see.

``parity.check`` runs both sides with every Dropout off (their random masks cannot be matched
across frameworks), so a port whose ``nnx.Dropout(0.3)`` stands for torch's ``nn.Dropout(0.5)``
passes every row and trains differently. ``dropout_notes`` pairs the two models' Dropout layers
by module path (through ``name_map``, as the weights are paired) and names each rate that differs.
"""

#: torch's dropout layers (``torch.nn``), each with its rate in ``p``
TORCH_DROPOUTS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")


def dropout_notes(torch_model, flax_model, name_map=None) -> list[str]:
    """One line per torch Dropout whose ``nnx.Dropout`` at the same (renamed) path has another rate.

    Args:
      torch_model: a torch ``nn.Module``.
      flax_model: an NNX module (anything else has no modules to pair: no notes).
      name_map: torch module path prefix -> Flax module path prefix, as ``port.torch_to_flax`` takes.
    """
    import torch.nn as nn
    from flax import nnx

    from flax_lenet.porting import port
    if not isinstance(flax_model, nnx.Module):
        return []
    rates = {".".join(map(str, path)): m.rate for path, m in nnx.iter_modules(flax_model)
             if isinstance(m, nnx.Dropout)}
    kinds = tuple(getattr(nn, name) for name in TORCH_DROPOUTS)
    notes = []
    for path, module in torch_model.named_modules():
        flax_path = port.rename(path, name_map)         # the rename the weights get
        if not isinstance(module, kinds) or flax_path not in rates or float(rates[flax_path]) == float(module.p):
            continue
        where = (path or "the model") + ("" if flax_path == path else f" (flax: {flax_path})")
        notes.append(f"dropout rates differ at {where}: torch p={module.p:g}, flax rate={rates[flax_path]:g} "
                     "(the comparison runs with dropout off, so it cannot see this)")
    return notes
