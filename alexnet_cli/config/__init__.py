"""Settings: what each command was asked to do, validated once at the CLI's edge and never changed after.

    vocabulary.py  the words each option takes (devices, precisions, augmentations, ...) and their checks
    settings.py    one frozen dataclass per command; every default lives here
    recipes.py     named sets of training settings (--recipe seed, paper, modern)

Nothing here imports torch: `alexnet --help` reads these for its defaults.
"""
