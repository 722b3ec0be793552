"""Training Kangaroo adapters (the target model stays frozen).

Pipeline, one small module per step::

    data.py      JSONL / ShareGPT records -> Examples (prompt messages + optional response), benchmark prompts removed
    teacher.py   the frozen target model, run once: (optionally) greedy self-distilled responses, the raw exit
                 hidden states h_l at the candidate exit layers and the teacher's top-k next-token distribution
    cache.py     those features on disk, in shards, keyed by everything that determines them (resumable)
    objective.py soft cross-entropy of softmax(head(adapter(h_l))) against the teacher, acceptance metrics
    trainer.py   the adapter-only training loop (seeded, resumable, progress bar with ETA)
    card.py      the training card written beside the adapter
    pipeline.py  train_adapter(): data -> features -> trained adapter directory (the API behind kangaroo-train)
    tune.py      exit layer / gamma / tau sweep on the real runtime (ORT engines)
"""
