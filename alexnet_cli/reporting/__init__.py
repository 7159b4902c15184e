"""Pictures of a run, beside the console's lines.

    plots.py         curves.png, confusion_matrix.png and the LR range test's curve (the plots extra)
    tensorboard.py   --tensorboard: scalars and sample images (the tensorboard extra)
"""
