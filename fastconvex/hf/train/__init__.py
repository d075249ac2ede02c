"""Fine-tuning: ``hf.finetune`` with the transformers ``Trainer``, and the
held-out splits it trains and evaluates on."""
