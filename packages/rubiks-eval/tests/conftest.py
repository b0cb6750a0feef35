import pytest
import torch


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A tiny generated synthetic data set (real encoded videos) and a random checkpoint."""
    import timm
    from rubiks_data.synthetic import SynthConfig, generate
    from rubiks_models.weights import save_weights

    root = tmp_path_factory.mktemp("synthetic")
    cfg = SynthConfig(num_train=12, num_val=14, width=40, height=32, num_frames=10, seed=5)
    generate(root / "data", cfg, workers=1, progress=False)
    torch.manual_seed(0)
    model = timm.create_model("rubiksnet_tiny", num_classes=12, num_frames=4)
    ckpt = root / "tiny.safetensors"
    save_weights(model, ckpt)
    return root / "data", ckpt
