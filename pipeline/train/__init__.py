"""Stage 2b: networks trained here. `config` holds the requests and their defaults (light); `loop` the shared
training loop (AdamW, schedules, early stopping, checkpoints, resume); `heads` a head on stored features
(`pipeline train`); `finetune` a network on the images (`pipeline finetune`)."""
