"""The input pipeline: sources → byte/token stream → packed windows → grain, exactly resumable.

`describe` (pure Python, for the plan compiler) counts what `train_loader` will yield; the loaders
import grain lazily so that `import capidsl.data` stays light.
"""

from capidsl.data.describe import DatasetInfo, describe


def train_loader(data, *, global_batch, process_index=0, process_count=1):
    """This process's rows of each global training batch, endlessly, as numpy dicts; see pipeline.py
    (packed windows), streams.py (the plan's `streams`: each row one contiguous stream) and buckets.py
    (the plan's `buckets`: one document per row, a few fixed batch shapes)."""
    if getattr(data, "mixture", ()):  # several sources by weight (mixture.py)
        from capidsl.data.mixture import train_loader as _train_loader
    elif getattr(data, "buckets", ()):
        from capidsl.data.buckets import train_loader as _train_loader
    elif getattr(data, "streams", 0):
        from capidsl.data.streams import train_loader as _train_loader
    else:
        from capidsl.data.pipeline import train_loader as _train_loader

    return _train_loader(data, global_batch=global_batch, process_index=process_index, process_count=process_count)


def eval_batches(data, *, global_batch, process_index=0, process_count=1, max_batches=None):
    """Deterministic validation batches (this process's rows); see pipeline.py and streams.py."""
    if getattr(data, "mixture", ()):
        from capidsl.data.mixture import eval_batches as _eval_batches
    elif getattr(data, "buckets", ()):
        from capidsl.data.buckets import eval_batches as _eval_batches
    elif getattr(data, "streams", 0):
        from capidsl.data.streams import eval_batches as _eval_batches
    else:
        from capidsl.data.pipeline import eval_batches as _eval_batches

    return _eval_batches(data, global_batch=global_batch, process_index=process_index,
                         process_count=process_count, max_batches=max_batches)


__all__ = ["DatasetInfo", "describe", "train_loader", "eval_batches"]
