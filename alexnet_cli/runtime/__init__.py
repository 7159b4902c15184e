"""Where and how a command computes, and what it needs of the machine.

    device.py       the one device policy (--device, --no-cuda, a torchrun rank's GPU), running-sum dtypes
    precision.py    --precision, and the CPU's bf16 measurement that decides auto
    context.py      Runtime: device, precision and loader processes resolved once per command
    distributed.py  torchrun: ranks, the process group, shards, sums over ranks
    seeds.py        every seed a run derives from --seed
    system.py       the user cache folder, the CPU's name and bf16 units
    files.py        atomic writes, snapshots by hard link, link-or-copy: every file the tool keeps
"""
