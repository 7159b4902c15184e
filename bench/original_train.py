"""The write-up's train.py (../shared/seed), as a baseline process for bench/whole_process.py.

Changed only where today's torch requires or where the original cannot run as a baseline, each marked
CHANGED: transforms.Scale (removed from torchvision) is Resize; it runs on the CPU when there is no GPU
(the original crashes without --no-cuda); the unused test set is not loaded; the data folder is an argument;
the state_dict is saved once an epoch rather than after every iteration (which would make the baseline
several times slower and the comparison meaningless). The architecture is alexnet_cli's `alexnet`, the
write-up's AlexNet.py layer for layer.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.datasets as datasets
import torchvision.transforms as transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexnet_cli.models.alexnet import build_model

parser = argparse.ArgumentParser()
parser.add_argument("data")  # CHANGED: was ./data/train/
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--lr", type=float, default=0.001)
parser.add_argument("--no-cuda", action="store_true", default=False)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--log-interval", type=int, default=1)
parser.add_argument("--save", default="AlexNet.pkl")
args = parser.parse_args()
args.cuda = not args.no_cuda and torch.cuda.is_available()  # CHANGED: the original ignored is_available below
torch.manual_seed(args.seed)
if args.cuda:
    torch.cuda.manual_seed(args.seed)

data_transforms = transforms.Compose([transforms.Resize(227),  # CHANGED: transforms.Scale(227)
                                      transforms.CenterCrop(227),
                                      transforms.ToTensor()])
train_dataset = datasets.ImageFolder(root=args.data, transform=data_transforms)
train_loader = torch.utils.data.DataLoader(dataset=train_dataset, batch_size=args.batch_size, shuffle=True)

model = build_model("alexnet", num_classes=len(train_dataset.classes))
if args.cuda:
    model.cuda()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
for epoch in range(args.epochs):
    for i, (images, labels) in enumerate(train_loader):
        if args.cuda:
            images, labels = images.cuda(), labels.cuda()
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        if (i + 1) % args.log_interval == 0:
            print(f"Epoch [{epoch + 1}/{args.epochs}], Iter [{i + 1}/{len(train_dataset) // args.batch_size}] "
                  f"Loss: {loss.item():.4f}")
    torch.save(model.state_dict(), args.save)  # CHANGED: was after every iteration
