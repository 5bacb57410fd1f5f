"""The tiny random Llama shape the CPU tests build (seconds to run, every path exercised: GQA 2:1)."""

TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=97,
    max_position_embeddings=512,
)
