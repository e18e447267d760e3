"""Training on Greenroom's exports: LoRA adapters by TRL's trainers, preference evaluation,
and the merged model for serving.

- :mod:`training.data` reads an export for a method and maps it to TRL's format
- :mod:`training.base` finds the base model (the bundled GGUF rebuilt as a plain model, or any
  Hugging Face folder)
- :mod:`training.trainer` runs ``SFTTrainer``, ``DPOTrainer`` or ``KTOTrainer`` with peft LoRA
- :mod:`training.preferences` compares base and adapter on held-out preference pairs
- :mod:`training.serving` merges an adapter into its base and writes a GGUF for llama.cpp

Nothing here imports ``bot``; torch, transformers, TRL and peft are imported only when used.
"""
