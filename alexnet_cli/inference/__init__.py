"""Using a trained model.

    evaluate.py   `alexnet evaluate` and validation during training: loss, top-k, per class, confusion
    predict.py    `alexnet predict`: top-k labels per image, from a checkpoint or the ImageNet weights
    tta.py        --tta flip and ten-crop
    gradcam.py    Grad-CAM: where the network looked, drawn over the image
    export.py     `alexnet export`: ONNX or TorchScript, checked against PyTorch
    describe.py   what `alexnet summary` describes: an architecture, a checkpoint or the ImageNet weights
"""
