"""The capret recipe: RS-CapRet (frozen CLIP + frozen LLM + trained linear bridge and [RET] retrieval)."""
