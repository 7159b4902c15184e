"""Data sets the tool makes or fetches, laid out as ImageFolder trees.

    demo.py        `alexnet demo`'s four textures, drawn by synthetic.py
    synthetic.py   images drawn by Pillow: shapes and textures (the demo, the tests)
    pets.py        `alexnet data pets`: Oxford-IIIT Pet as cat and dog folders
    benchmarks.py  `alexnet data fashion-mnist` and `cifar10`
    imagenet.py    `alexnet data imagenet`: ILSVRC-2012 from its archives
"""
