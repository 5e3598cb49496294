"""Data: corpus readers, the SentencePiece tokenizer and the batching pipeline."""
