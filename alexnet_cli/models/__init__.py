"""The network: what an AlexNet is, and nothing about data, files or devices.

    registry.py   the architectures as data (widths, groups, LRN, input sizes) and the input-size rules; no torch
    alexnet.py    the AlexNet class (module level: isinstance works, a whole model pickles) and the typed builder
    summary.py    the layer-by-layer arithmetic of `alexnet summary`, traced on the meta device
"""
