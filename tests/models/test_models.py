import pytest
import torch
import torchvision
from support.helpers import TEST_ARCH

from alexnet_cli.errors import CheckpointError, ConfigError
from alexnet_cli.models.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, build_model
from alexnet_cli.models.registry import ARCHITECTURES, check_image_size


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "classes", "expected"),
    [
        ("alexnet", 2, 58_289_538),
        ("alexnet", 1000, 62_378_344),
        ("alexnet-paper", 1000, 60_965_224),  # the paper's "60 million parameters"
        ("alexnet-torchvision", 1000, 61_100_840),
    ],
)
def test_parameter_counts(arch, classes, expected):
    with torch.device("meta"):
        assert n_params(build_model(arch, num_classes=classes)) == expected


def test_torchvision_state_dict_loads_and_gives_identical_logits():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    ours = build_model("alexnet-torchvision", num_classes=1000, state_dict=reference.state_dict()).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_paper_variant_uses_groups_and_lrn_with_paper_constants():
    model = build_model("alexnet-paper", num_classes=10)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    lrns = [m for m in model.features if isinstance(m, torch.nn.LocalResponseNorm)]
    assert len(lrns) == 2
    # torch's LRN computes a / (k + alpha/n * sum a^2)^beta; the paper's is a / (k + alpha * sum a^2)^beta.
    a = torch.rand(1, 8, 3, 3) * 10
    padded = torch.nn.functional.pad(a.pow(2), (0, 0, 0, 0, LRN_SIZE // 2, LRN_SIZE // 2))
    window = torch.stack([padded[:, c : c + LRN_SIZE].sum(1) for c in range(8)], 1)
    paper = a / (LRN_K + LRN_ALPHA * window) ** LRN_BETA
    assert torch.allclose(lrns[0](a), paper, rtol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_minimum_input_size_is_exact(arch):
    minimum = ARCHITECTURES[arch].min_image_size
    with torch.device("meta"):
        model = build_model(arch, num_classes=3)
        assert model(torch.empty(1, 3, minimum, minimum)).shape == (1, 3)
        assert model(torch.empty(1, 3, 300, 300)).shape == (1, 3)  # larger inputs pool down to 6x6
        with pytest.raises(RuntimeError):
            model(torch.empty(1, 3, minimum - 1, minimum - 1))
    check_image_size(arch, minimum)
    with pytest.raises(ConfigError, match=f"minimum is {minimum}"):
        check_image_size(arch, minimum - 1)


def test_builder_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="only for alexnet-torchvision"):
        build_model("alexnet", pretrained=True)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("alexnet", dropout=1.0)


def test_builder_reports_weights_that_do_not_fit():
    state = build_model("alexnet", num_classes=2).state_dict()
    with pytest.raises(CheckpointError, match="do not fit alexnet with 3 classes"):
        build_model("alexnet", num_classes=3, state_dict=state)


def test_dropout_is_configurable():
    model = build_model("alexnet", num_classes=2, dropout=0.2)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]


def test_every_variant_is_the_one_module_level_class_and_a_whole_model_pickles():
    """One class, defined once: isinstance holds for every variant, and a whole model (not only its
    state_dict) round-trips through pickle, as a process boundary or torch.save of the module needs. The
    variants are built on the meta device, and the suite's small one is pickled: the class is the subject,
    not 58M parameters."""
    import pickle

    from alexnet_cli.models.alexnet import AlexNet
    from alexnet_cli.models.registry import ARCHITECTURES

    for arch in ARCHITECTURES:
        with torch.device("meta"):
            assert isinstance(build_model(arch, num_classes=3), AlexNet), arch
    model = build_model(TEST_ARCH, num_classes=3)
    copy = pickle.loads(pickle.dumps(model))
    assert type(copy) is AlexNet
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))
    images = torch.rand(2, 3, 67, 67)
    assert torch.equal(model.eval()(images), copy.eval()(images))
