"""A pretrained Hugging Face backbone for a training family (memorize, hf_lm): its tokenizer, its
weights and a checkpoint's weights into the wrapper, each failure one line naming --backbone."""
from __future__ import annotations

from rmt.training.checkpoint import first_line


def load_tokenizer(backbone: str):
    """The backbone's tokenizer; transformers' warnings about long texts and its progress bars off."""
    from transformers import AutoTokenizer, logging

    logging.set_verbosity_error()  # a whole corpus split is longer than one input: that is intended
    logging.disable_progress_bar()
    try:
        return AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --backbone {backbone} has no loadable tokenizer ({type(e).__name__}); "
                         "give a transformers model directory") from None


def load_backbone(auto_class: str, backbone: str, **kwargs):
    """transformers.<auto_class>.from_pretrained(backbone, **kwargs)."""
    import transformers

    try:
        return getattr(transformers, auto_class).from_pretrained(backbone, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: --backbone {backbone} is not a loadable model for {auto_class} "
                         f"({type(e).__name__})") from None


def load_weights(model, state: dict | None, backbone: str):
    """A checkpoint's weights into the wrapper (None: the wrapper as built); returns the model."""
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise SystemExit(f"error: the checkpoint does not fit --backbone {backbone} with these flags "
                             f"({first_line(e)}); pass the flags it was trained with") from None
    return model
