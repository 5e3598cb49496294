"""Scoring: the offline evaluation (`evaluate`), the autoregressive model that judges samples and
serves as the baseline and prefix LM (`ar_model`), text metrics, conditional tasks (seq2seq,
infilling) and the compute gap to AR."""
