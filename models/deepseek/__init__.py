"""deepseek: the DeepSeek model family (LLM, MoE, V2, V3).

Plain single-device model code, Hugging Face checkpoint compatibility and the training
entry point that platform jobs run.
"""

__all__: list[str] = []
