"""Inference servers: llama.cpp and vLLM, rendered from a Plan and run on a Host."""
