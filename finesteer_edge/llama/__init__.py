"""The llama.cpp layer: bindings we resolve ourselves, the decoding session, chat templates."""
