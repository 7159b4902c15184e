"""What a run leaves on disk.

    checkpoint.py   the one schema of a checkpoint (Checkpoint, TrainingState), weights-only loads
    background.py   CheckpointWriter: one checkpoint written on a thread while the next epoch trains
    run_folder.py   runs/train-N: its numbering, config.json, metrics.csv, last.pt and best.pt
"""
