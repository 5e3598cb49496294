"""The special token ids every tokenizer of the library reserves (SentencePiece's pad/unk/bos/eos):
sequences are `BOS pieces EOS PAD...`, and a seq2seq row is `BOS source EOS target EOS PAD...`."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
