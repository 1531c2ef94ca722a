"""Training one round: `fit.train_round` (in this process, or in torchrun `worker`s for FSDP / DeepSpeed), the
LightningModule (`module`), the data module (`data`), the CodeLutra loss (`loss`) and Trainer arguments
(`strategies`)."""
