"""RMT over Hugging Face `transformers` models (an optional dependency: pip install -e '.[hf]')."""
from rmt.hf.modeling import RMTConfig, RMTForCausalLM, RMTForSequenceClassification, RMTOutput

__all__ = ["RMTConfig", "RMTForCausalLM", "RMTForSequenceClassification", "RMTOutput"]
