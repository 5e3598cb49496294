"""Training: the compiled train and likelihood-bound steps, the one loop skeleton every stage runs
in, the small fit function of auxiliary models, the diffusion training loop
(`train_and_evaluate`) and the analytic FLOP counts that every compute comparison rests on."""
