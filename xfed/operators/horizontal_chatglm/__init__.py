"""horizontal_chatglm: federated LoRA / P-tuning v2 fine-tuning of ChatGLM-family (and other HF causal) LMs.

`operator.run(ctx)` runs one stage on one node; importing this package loads neither torch nor
transformers, so config validation stays fast.
"""
