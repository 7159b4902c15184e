"""The data path, in the order data flows through it:

  folders.py    class folders, the checked list of a folder's images (an ImageSet), validation splits
  index.py      a folder's index, kept in the user's cache: only new and changed files are opened again
  samples.py    paths and labels as flat tensors, cheap to share with loader processes
  images.py     decoding one file, or naming why it cannot be used
  cache.py      the decoded images kept in memory, where they fit
  preprocess.py the model's input pipeline (stored in checkpoints); augment.py, training's random half
  loading.py    datasets, samplers and loaders: what carries images to the model
  datasets.py, imagenet.py   `alexnet data`: benchmark sets laid out as image folders

Nothing here imports torch or torchvision at import time: a loader process started by spawn imports these
modules to unpickle its transforms, and the CLI imports them to start.
"""
