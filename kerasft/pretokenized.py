"""Feeding token-id batches to a keras-hub task that has a preprocessor."""

import contextlib


@contextlib.contextmanager
def pretokenized(model):
    """Detaches `model.preprocessor` inside the block, then puts it back.

    keras-hub tasks run their preprocessor on whatever `fit`, `evaluate` and
    `predict` receive, which breaks on batches that are already token ids (as
    `kerasft.data` builds them, with response-only loss masks). `generate`
    needs the preprocessor, so it is restored on exit, also after an error.

        with kerasft.pretokenized(model):
            model.fit(x, y, sample_weight=w)
        model.generate("Define the word apple.")
    """
    preprocessor = getattr(model, "preprocessor", None)
    model.preprocessor = None
    try:
        yield model
    finally:
        model.preprocessor = preprocessor
