"""The data path, in the order data flows through it:

  folders.py    class folders, the checked list of a folder's images (an ImageSet), validation splits
  names.py      names as text any output holds, classes in Unicode NFC, display names (class_names.json)
  index.py      a folder's index, kept in the user's cache: only new and changed files are opened again
  samples.py    paths and labels as flat tensors, cheap to share with loader processes
  images.py     decoding one file, or naming why it cannot be used
  cache.py      the decoded images kept in memory, where they fit
  preprocess.py the model's input pipeline (stored in checkpoints); augment.py, training's random half
  loading.py    datasets, samplers and loaders: what carries images to the model
  checks.py     `alexnet check`: counts, unreadable files, odd images, train/val duplicates
  sources/      the data sets the tool makes or fetches (the demo's, Pet, Fashion-MNIST, CIFAR-10, ImageNet)

torchvision is imported inside the functions that need it: it imports torch._dynamo, about a second that
training, evaluate and predict with their default options never need.
"""
