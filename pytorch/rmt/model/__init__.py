"""The model: Transformer-XL with RMT memory tokens (transformer), its layers and adaptive
softmax, and the segment recurrence (recurrence: MemoryState and THE segment loop)."""
