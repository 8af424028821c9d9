"""RMT over Hugging Face `transformers` models (an optional dependency: pip install -e '.[hf]')."""
try:
    import transformers  # noqa: F401
except ImportError as e:  # one line that says what to install, not a traceback from deep inside
    raise ImportError("rmt.hf needs transformers: pip install -e '.[hf]' (peft too, for LoRA)") from e

from rmt.hf.modeling import RMTConfig, RMTForCausalLM, RMTForSequenceClassification, RMTOutput  # noqa: E402
from rmt.hf.associative import ARMTForCausalLM  # noqa: E402

__all__ = ["ARMTForCausalLM", "RMTConfig", "RMTForCausalLM", "RMTForSequenceClassification", "RMTOutput"]
