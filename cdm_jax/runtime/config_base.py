"""The base configuration, every field documented. `configs/*.py` start from it:
`from cdm_jax import config_base; config = config_base.get_config()`, then override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # base PRNG seed: init, noise, data order
  config.data = _data()
  config.model = _model()
  config.diffusion = _diffusion()
  config.condition = _condition()
  config.train = _train()
  config.sample = _sample()
  return config


def _data() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.corpus = "wordnet"      # wordnet | text (one example per line) | jsonl | hf (optional extra)
                               # | wordnet_definitions | wordnet_reverse (seq2seq pairs)
  data.path = ""               # file for text/jsonl, dataset name for hf
  data.field = "text"          # jsonl/hf field holding the text
  data.source_field = ""       # jsonl seq2seq: the source and target fields (both set: pairs,
  data.target_field = ""       # encoded BOS source EOS target EOS; train with condition.source)
  data.hf_split = "train"      # hf split to read
  data.max_examples = 0        # 0: all; else keep the first N examples (quick experiments)
  data.valid_percent = 2.0     # held-out share, chosen by a hash of each example's text
  data.vocab_size = 4000       # SentencePiece pieces, including PAD/UNK/BOS/EOS (ids 0-3)
  data.tokenizer_type = "unigram"  # unigram | bpe
  data.seq_len = 32            # tokens per sequence: BOS + pieces + EOS, then PAD
  data.long_lines = "truncate"  # truncate | drop | error | split (into several rows, plain text),
                                # for examples longer than seq_len - 2
  data.packing = False         # True: no PAD; each sequence starts at an example and continues with
                               # the next ones (sampling keeps the text up to the first EOS)
  data.prepared = ""           # a folder of `cdm-prepare` (token shards): streamed from disk, not
                               # read into memory; seq_len and vocab_size must match its own
  data.shuffle_window = 1 << 18  # prepared corpora: examples shuffled together (blocks of 4096
                                 # consecutive ones, permuted, mixed in windows of this many)
  return data


def _model() -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict()
  model.encoder = "embedding"  # E: embedding (a table, one latent per token) | latent (the text
                               # autoencoder's m = n / latent_ratio contextual latents; its
                               # `autoencoder` block: configs/wordnet_latent.py)
  model.latent_ratio = 1       # k of the latent encoder
  model.embed_dim = 64         # d: latent width of the diffusion (embedding table columns)
  model.width = 256            # transformer width
  model.num_layers = 6
  model.num_heads = 4
  model.mlp_dim = 1024
  model.dropout_rate = 0.0
  model.time_conditioning = "adaln"  # adaln (adaptive LayerNorm from log-SNR) | add
  model.self_conditioning = True     # feed the previous x0_hat as an input
  model.conditioning = True    # accept known latents + a mask (prefix / infilling / seq2seq)
  model.context_layout = "positions"  # a latent model trained with condition.prefix/suffix/spans
                               # reads the row with its unknown positions PAD ("positions") or UNK
                               # ("marked") in context; seq2seq sources are always "pairs"
  model.null_context = "zeros"  # a latent model's null condition (what guidance contrasts with):
                               # "zeros", or "length" (the known pieces UNK: the same extent)
  model.normalize_embeddings = False  # L2-normalize embedding rows before every use (CDCD)
  model.embed_scale = 1.0      # row norm ~ embed_scale * sqrt(embed_dim)
  model.output = "x0"          # x0 | eps | v (MSE targets) | logits (cross-entropy, CDCD) |
                               # logits_prior (logits + the context-free posterior's; normalized E)
  model.dtype = "float32"      # compute dtype: float32 on CPU, bfloat16 on TPU/GPU
  model.matmul_dtype = "float32"  # operands of the Dense matmuls, the read-out CE's logits and the
                                  # sampling clamp (float32 accumulation): bfloat16 uses AMX on
                                  # recent Xeons (2x faster sampling forward here)
  model.scan_layers = False    # nn.scan over layers: faster compile for deep models
  model.remat = False          # recompute block activations in the backward pass (less memory)
  model.pos_init_std = 0.02    # init std of the denoiser's position embedding. Its input projection
                               # of the noisy latents has std ~1 per unit: at 0.02 a fresh denoiser
                               # cannot tell positions apart (a bag of noisy tokens) until training
                               # grows them; 1.0 makes order visible from the first step
  return model


def _diffusion() -> ml_collections.ConfigDict:
  diff = ml_collections.ConfigDict()
  diff.schedule = "cosine"     # cosine | linear | sqrt | tan_d | ve
  diff.tan_d = 9.0             # d of the tan_d schedule
  diff.position_skew = 0.0     # w > 0: left-to-right denoising, position n of L at time
                               # clip((1 + w) t - w (1 - n / (L - 1)), 0, 1); 0: all share t
  diff.ve_sigma_min = 0.01     # range of the variance-exploding schedule
  diff.ve_sigma_max = 100.0
  diff.rounding_weight = 1.0   # weight of -log p(w | z_tmin) through the tied read-out
  diff.anchor_weight = 0.0     # weight of the read-out cross-entropy on x0_hat
  diff.mask_padding = False    # True: no loss on PAD (fixed-length output); False: learn PAD
  diff.self_cond_prob = 0.5    # share of batches trained with self-conditioning
  diff.time_warp = False       # draw training t from the learned warping (CDCD)
  diff.importance_weight = True  # with time_warp: weight losses by 1/p(t) (unbiased objective)
  diff.warp_bins = 100         # bins of the learned warping CDF
  diff.warp_follow = "loss"    # loss: density ~ the loss (time where it is high) | slope: CDF ~ the
                               # loss (CDCD: time where it changes, i.e. where tokens are ambiguous)
  diff.bound_log_snr_max = 4.0  # the likelihood bound's lower end in log-SNR (see diffusion.py)
  return diff


def _condition() -> ml_collections.ConfigDict:
  """Shares of the known-position mixture each training example draws from (cdm_jax/
  conditioning.py); "none" takes the rest. They need model.conditioning=True."""
  cond = ml_collections.ConfigDict()
  cond.prefix = 0.2            # BOS + a prefix known: continuation
  cond.suffix = 0.1            # BOS + the tail, EOS and PAD known
  cond.spans = 0.2             # alternating known/unknown spans: infilling
  cond.source = 0.0            # up to the first EOS known: seq2seq (data.target_field set)
  cond.span_length = 4.0       # mean span length of "spans"
  cond.dropout = 0.1           # share of conditioned examples whose known latents are zeroed:
                               # the null condition that classifier-free guidance contrasts with
  return cond


def _train() -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict()
  train.batch_size = 64        # global batch over all devices and hosts
  train.num_train_steps = 2000
  train.learning_rate = 1e-3   # peak AdamW learning rate
  train.warmup_steps = 200     # linear warm-up, then the schedule's decay
  train.schedule = "cosine"    # "cosine": decay to 10% of the peak at num_train_steps; "wsd":
                               # warmup-stable-decay, constant until the cooldown, then to 0
  train.cooldown_fraction = 0.2  # (wsd) share of num_train_steps spent cooling down
  train.cooldown = "linear"    # (wsd) "linear" or "cosine" cooldown
  train.weight_decay = 0.0
  train.grad_clip_norm = 1.0   # global-norm clipping; 0 disables it
  train.ema_decay = 0.999      # EMA of parameters (warmed up: min(decay, (1+s)/(10+s)))
  train.steps_per_call = 1     # optimizer steps per dispatch (lax.scan); logs land on multiples
  train.log_every_steps = 50
  train.embedding_stats_t = 0.5  # t of the noisy nearest-embedding decode statistic (logged)
  train.eval_every_steps = 500  # likelihood bound on the valid split; 0 disables it
  train.num_eval_batches = 4
  train.checkpoint_every_steps = 250
  train.keep_checkpoints = 3
  train.keep_steps = ()        # steps also checkpointed and never deleted (e.g. wsd branch points)
  train.branch_from = ""       # a workdir: a fresh run starts from its checkpoint at branch_step
  train.branch_step = 0        # (e.g. a wsd cooldown from a stable-phase checkpoint)
  train.sample_every_steps = 500  # write samples to workdir/samples/; 0 disables it
  train.time_limit_minutes = 0.0  # > 0: stop (and checkpoint) after this much training time
  train.stop_at_step = 0       # > 0: checkpoint and stop there (split a run into jobs); rerun resumes
  train.num_devices = 0        # devices of each process to use; 0: all of them
  train.skip_nonfinite = False  # True: a step with a non-finite loss/gradient is skipped (state
                                # kept, counted as skipped_nonfinite) instead of stopping training
  train.fsdp = False           # True: parameters, Adam moments and EMA sharded over the devices
  train.fsdp_min_size = 4096   # (FSDP) arrays with fewer elements stay replicated
  train.fsdp_axis_size = 0     # (FSDP) devices per group sharing one copy of the state (mesh axis
                               # 'fsdp'; groups replicate over 'data'); 0: all devices, one group
  return train


def _sample() -> ml_collections.ConfigDict:
  sample = ml_collections.ConfigDict()
  sample.num_samples = 16      # samples written during training and by default from the CLI
  sample.num_steps = 100
  sample.sampler = "ddim"      # ddpm | ddim | euler | heun
  sample.clamp = "soft"        # none | hard (nearest embedding) | soft (read-out expectation)
  sample.clamp_temperature = 1.0
  sample.clamp_max_t = 1.0     # clamp only at t <= this (late clamping avoids early PAD/EOS commits)
  sample.logit_temperature = 1.0  # x0_hat = softmax(logits / this) E for logits outputs; < 1 sharpens
  sample.renoise_min_t = 0.0   # re-noise x0_hat (q-sampling) at steps from t in [min, max]
  sample.renoise_max_t = 0.0   #   (Shabalin et al. 2026's narrow interval); min >= max: off
  sample.ddim_eta = 0.0        # sampler "ddim": share of each step's noise redrawn (1: DDPM's)
  sample.decoder = "readout"   # readout (tied argmax) | l2 | cosine (nearest embedding)
  sample.time_grid = "uniform"  # uniform | warp (follow the learned time warping)
  return sample


def autoencoder() -> ml_collections.ConfigDict:
  """The `autoencoder` block of a config with model.encoder="latent": the text autoencoder's sizes,
  augmentations and training stage (WORKDIR/autoencoder/, run before the diffusion model). Its k
  is model.latent_ratio and its d model.embed_dim."""
  ae = ml_collections.ConfigDict()
  ae.width = 256
  ae.num_heads = 4
  ae.mlp_dim = 1024
  ae.encoder_layers = 3
  ae.resampler_layers = 2
  ae.decoder_layers = 3
  # Robustness augmentations (COSMOS: mask 0.3, delta 0.7, dropout 0.4 on 768-dim latents). At
  # d = 16-64 they slow reconstruction several fold (docs/latent.md); the default keeps the VP
  # noise, which is what the decoder meets in generated latents.
  ae.mask_rate = 0.0           # half the batch: positions hidden from the encoder's attention
  ae.noise_delta = 0.9         # other half: delta z + sqrt(1 - delta^2) eps
  ae.latent_dropout = 0.0      # element-wise on every example
  # What the encoder reads: "scratch" (token embeddings) or "ar": the frozen hidden states of the
  # library's causal LM in `feature_model` (a folder experiments/ar_features.py prints), of the
  # feature_* sizes; the decoder then also regresses them (CE + align_weight x MSE). Its training
  # FLOPs count in the autoencoder's.
  ae.features = "scratch"
  ae.feature_model = ""
  ae.feature_width = 256
  ae.feature_layers = 6
  ae.feature_heads = 4
  ae.feature_mlp_dim = 1024
  ae.align_weight = 1.0
  ae.feature_copy = False      # features="ar": add the token embeddings to the LM's states
  ae.batch_size = 64
  ae.num_steps = 1500
  ae.learning_rate = 2e-3
  ae.warmup_steps = 100
  ae.weight_decay = 0.0
  ae.checkpoint_every_steps = 250
  ae.log_every_steps = 50
  ae.eval_batches = 8          # held-out batches of the final reconstruction accuracy
  ae.stats_batches = 16        # training batches the standardization statistics are measured on
  ae.stop_at_step = 0          # > 0: checkpoint and stop the stage there; rerun resumes
  return ae
