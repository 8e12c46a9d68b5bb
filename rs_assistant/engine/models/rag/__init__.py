"""RS-RAG (Wen et al., 2025): a multimodal knowledge index (CLIP image and text embeddings of knowledge
passages in usearch vector indexes on disk), retrieval with re-ranking, and knowledge-augmented prompts.

Built and used by training/recipes/rag; served by rs_assistant/engine/backends/rag.py (the VLM is an
RSA checkpoint beside the index).
"""

from rs_assistant.engine.models.rag.knowledge_index import (
    INDEX_CONFIG,
    Fusion,
    Hit,
    KnowledgeIndex,
    Passage,
    knowledge_prompt,
)

__all__ = ["INDEX_CONFIG", "Fusion", "Hit", "KnowledgeIndex", "Passage", "knowledge_prompt"]
