"""CIFAR-10 as a LightningDataModule, served in a colour-decorrelated space.

Each split is read once from the official python batches into a uint8 tensor; batches travel to the device as
uint8 and are augmented (random crop with padding, horizontal flip), converted to float and mapped to model space
there, in ``on_after_batch_transfer``, instead of per sample in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from featvis import cifar
from featvis.cifar import CIFAR10_FOLDER, IMAGE_SIZE, NUM_CLASSES, read_class_names, read_split
from featvis.colour import ColourTransform


def random_crop_flip(
    images: Tensor, padding: int, flip: bool | Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Batched random crop (reflect padding) and horizontal flip, one draw per image.

    Args:
        images: ``(N, C, H, W)`` float images.
        padding: pixels of reflect padding before cropping back to ``H x W``; 0 disables the crop.
        flip: True flips a random half of the images horizontally; a boolean ``(N,)`` tensor says which.
        generator: random source; the draws are made on its device (e.g. a CPU generator for CUDA images, so
            the draws do not depend on the device) and moved to the images'. None uses the global one.
    """
    n, _, height, width = images.shape
    device = images.device
    drawn_on = generator.device if generator is not None else device
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=drawn_on, generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=drawn_on, generator=generator).to(device)
        rows = torch.arange(height, device=device).view(1, height, 1) + dy
        cols = torch.arange(width, device=device).view(1, 1, width) + dx
        batch_index = torch.arange(n, device=device).view(n, 1, 1)
        # Advanced indexing gathers every image's own window at once: (N, H, W, C).
        images = padded.permute(0, 2, 3, 1)[batch_index, rows, cols].permute(0, 3, 1, 2)
    if isinstance(flip, Tensor):
        if flip.shape != (n,) or flip.dtype != torch.bool:
            raise ValueError(
                f"a flip mask must be a bool tensor of shape ({n},), got {flip.dtype} {tuple(flip.shape)}."
            )
        flipped = flip.to(device)
    elif flip:
        flipped = (torch.rand(n, device=drawn_on, generator=generator) < 0.5).to(device)
    else:
        flipped = None
    if flipped is not None:
        images = torch.where(flipped.view(n, 1, 1, 1), images.flip(3), images)
    return images.contiguous()


class _TensorBatches(Dataset):
    """Indexed by a list of indices, returns a whole batch at once (no per-sample collation)."""

    def __init__(self, images: Tensor, labels: Tensor, with_indices: bool = False) -> None:
        self.images = images
        self.labels = labels
        self.with_indices = with_indices

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices)
        if self.with_indices:  # training batches carry their image indices, for per-image flip states
            return self.images[index], self.labels[index], index
        return self.images[index], self.labels[index]


class _BatchIndices(Sampler[list[int]]):
    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> None:
        self.size, self.batch_size, self.shuffle, self.drop_last, self.seed = (
            size,
            batch_size,
            shuffle,
            drop_last,
            seed,
        )
        self.epoch = 0
        # Batches of `epoch` trained before a mid-epoch checkpoint: the next pass starts after them.
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` next; Lightning calls this at the start of every epoch (a resumed run too)."""
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        if self.shuffle:
            # A private generator seeded per epoch: the order is reproducible and independent of global RNG use.
            # The order of epoch e depends on e alone (set_epoch), so a resumed run continues the same sequence.
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
            self.epoch += 1
        else:
            order = torch.arange(self.size)
        stop = self.size - self.size % self.batch_size if self.drop_last else self.size
        for start in range(skip * self.batch_size, stop, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10 from the official python batches, augmented on the device, in a decorrelated colour space.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-10-batches-py``.
        batch_size: training batch size.
        eval_batch_size: batch size for validation, test and predict.
        download: download and extract the official archive into ``data_dir`` when the folder is missing.
        decorrelate: map colours with Cholesky whitening fitted on the training pixels (identity colour
            covariance); if False, plain per-channel mean/std normalisation.
        val_size: number of training images held out for validation; 0 validates on the 10,000-image test split.
        crop_padding: reflect padding of the random-crop augmentation, in pixels (0 disables it).
        flip: horizontal flips during training: ``"random"`` (each image with probability 1/2 every epoch),
            ``"alternating"`` (a random half in even epochs, the other half in odd epochs, so every image is seen
            both ways in any two consecutive epochs), or ``"none"``.
        seed: seed of the shuffling order, of the crop and flip draws and of the held-out split.
        num_workers: DataLoader worker processes; batches are slices of in-memory tensors, so 0 is usually fastest.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 512,
        eval_batch_size: int = 1000,
        download: bool = True,
        decorrelate: bool = True,
        val_size: int = 0,
        crop_padding: int = 4,
        flip: Literal["random", "alternating", "none"] = "random",
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("val_size", val_size, 0),
            ("crop_padding", crop_padding, 0),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        if flip not in ("random", "alternating", "none"):
            raise ValueError(f"flip must be 'random', 'alternating' or 'none', got {flip!r}.")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.classes: list[str] = []
        self.colour: ColourTransform | None = None
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}
        # Crop offsets and random flips: a private CPU generator (so augmentation is independent of global RNG
        # use and of the device), saved in checkpoints by state_dict() so a resumed run continues its sequence.
        self._augment_generator = torch.Generator().manual_seed(seed + 2)
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches trained) of a restored checkpoint

    @property
    def folder(self) -> Path:
        """The ``cifar-10-batches-py`` folder."""
        return self.data_dir / CIFAR10_FOLDER

    @property
    def image_size(self) -> int:
        """Side length of the images, in pixels."""
        return IMAGE_SIZE

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def val_is_test(self) -> bool:
        """True when validation runs on the test split (``val_size`` 0), so a validation score is a test score."""
        return self.hparams["val_size"] == 0

    def prepare_data(self) -> None:
        """Download and extract the official archive if the folder is missing and ``download`` is set."""
        if self.folder.is_dir():
            return
        if not self.hparams["download"]:
            raise FileNotFoundError(
                f"CIFAR-10 folder {self.folder} not found. Either set download=True "
                f"(--data.download true) to fetch it from {cifar.CIFAR10_URL}, or set data_dir "
                f"(--data.data_dir) to the folder that contains {CIFAR10_FOLDER}."
            )
        cifar.download_cifar10(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load each split once into uint8 tensors and fit the colour transform on the training pixels."""
        if self._splits:
            return
        if not self.folder.is_dir():
            self.prepare_data()
        self.classes = read_class_names(self.folder)
        train_images, train_labels = read_split(self.folder, train=True)
        test = read_split(self.folder, train=False)
        val_size = self.hparams["val_size"]
        if val_size >= train_images.shape[0]:
            raise ValueError(
                f"val_size={val_size} leaves no training images (the split has {train_images.shape[0]})."
            )
        if val_size:
            order = torch.randperm(
                train_images.shape[0], generator=torch.Generator().manual_seed(self.hparams["seed"])
            )
            held, kept = order[:val_size], order[val_size:]
            self._splits["val"] = (train_images[held], train_labels[held])
            train_images, train_labels = train_images[kept], train_labels[kept]
        else:
            self._splits["val"] = test
        self._splits["train"] = (train_images, train_labels)
        # Flip state of each training image in even epochs (alternating flips), from the data seed.
        generator = torch.Generator().manual_seed(self.hparams["seed"] + 1)
        self._flip_even = torch.rand(train_images.shape[0], generator=generator) < 0.5
        self._splits["test"] = test
        if self.hparams["decorrelate"]:
            self.colour = ColourTransform.from_pixels(train_images)
        else:
            as_float = train_images.float().div_(255)
            self.colour = ColourTransform.from_normalisation(
                as_float.mean(dim=(0, 2, 3)).tolist(), as_float.std(dim=(0, 2, 3)).tolist()
            )

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The uint8 images and labels of ``"train"``, ``"val"`` or ``"test"`` (after ``setup``)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose 'train', 'val' or 'test'.")
        if not self._splits:
            self.setup()
        return self._splits[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        images, labels = self.split(name)
        batch_size = self.hparams["batch_size"] if shuffle else self.hparams["eval_batch_size"]
        sampler = _BatchIndices(
            len(labels), batch_size, shuffle, drop_last=shuffle, seed=self.hparams["seed"]
        )
        if shuffle and self._resume_at is not None:
            # Resuming: continue the epoch's order after the batches trained before the checkpoint (a checkpoint
            # after an epoch's last batch continues with the next epoch).
            epoch, done = self._resume_at
            self._resume_at = None
            sampler.epoch, sampler.skip = (epoch, done) if done < len(sampler) else (epoch + 1, 0)
        return DataLoader(
            _TensorBatches(images, labels, with_indices=shuffle),
            sampler=sampler,
            batch_size=None,
            num_workers=self.hparams["num_workers"],
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def to_model_space(self, images: Tensor) -> Tensor:
        """Map uint8 (0..255) or float RGB in [0, 1] images to the model's input space."""
        if self.colour is None:
            self.setup()
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        assert self.colour is not None  # setup() always sets it
        colour = self.colour.to(images.device)
        return colour.to_model(images)

    def to_rgb(self, model_space: Tensor) -> Tensor:
        """Map model-space images back to RGB in [0, 1] units (not clipped)."""
        if self.colour is None:
            self.setup()
        assert self.colour is not None  # setup() always sets it
        return self.colour.to(model_space.device).to_rgb(model_space)

    def flip_mask(self, indices: Tensor, epoch: int) -> bool | Tensor:
        """Which training images (by index) are mirrored in ``epoch``, per the ``flip`` setting."""
        mode = self.hparams["flip"]
        if mode == "alternating":
            return self._flip_even.to(indices.device)[indices] ^ bool(epoch % 2)
        return mode == "random"

    def on_after_batch_transfer(self, batch: Sequence[Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch[0], batch[1]
        images = images.float().div_(255)
        trainer = self.trainer
        if trainer is not None and trainer.training:
            indices = batch[2] if len(batch) > 2 else torch.arange(labels.shape[0], device=labels.device)
            flip = self.flip_mask(indices, getattr(trainer, "current_epoch", 0))
            images = random_crop_flip(images, self.hparams["crop_padding"], flip, self._augment_generator)
        images = self.to_model_space(images).contiguous(memory_format=torch.channels_last)
        return images, labels

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the training data bit for bit.

        The crop/flip generator's state and, during ``fit``, the epoch and how many of its batches were trained,
        so that a mid-epoch checkpoint (``ModelCheckpoint(every_n_train_steps=...)``) resumes with the epoch's
        next batch. The shuffling order of epoch e is seeded by ``seed + e`` and the alternating-flip phase
        follows the trainer's epoch, so neither needs saving.
        """
        state: dict[str, Any] = {"augment_generator": self._augment_generator.get_state()}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            # Batches whose optimiser step is done (`completed` lags by one in on_train_batch_end, where
            # ModelCheckpoint(every_n_train_steps) saves); typed as the tracker without `processed`.
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            state["epoch"] = trainer.current_epoch
            state["batches_trained"] = progress.processed  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checkpoints from before it existed hold nothing and are accepted)."""
        if "augment_generator" in state_dict:
            self._augment_generator.set_state(state_dict["augment_generator"])
        if "epoch" in state_dict:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches_trained"]))
