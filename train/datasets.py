"""torch Datasets over `edgeas.train.data` samples, preprocessed by the one recipe.

Images go through `edgeas.preprocess.preprocess_bgr` exactly as the runtime
does (protocol.md section 1); augmentation happens after it, on the tensor, so
that an unaugmented training image is bit-identical to what the station sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeas.config import AUGMENTATIONS
from edgeas.errors import ConfigError, DataError
from edgeas.preprocess import Recipe, preprocess_bgr
from edgeas.train.data import Sample, read_image, read_mask

FLIP_P = 0.3


def _class_index(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, int]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({s.cls for s in samples} - set(index))
    if unknown:
        raise DataError(
            f"samples of class(es) {', '.join(unknown)} are not in the model's class list",
            hint=f"model classes: {', '.join(class_names)}",
        )
    return index


class TrainImages(Dataset):
    """(image float32 (3,H,W), class index) for the normal training images.

    `augment` maps a class name to the augmentations valid for it (`hflip`,
    `vflip`: each applied with p=0.3; `rot90`: k in {0,1,2,3} uniformly);
    classes not listed are never augmented. The random draws come from a torch
    Generator seeded by (seed, epoch, index), so a run is reproducible whatever
    the number of DataLoader workers. Call `set_epoch` before each epoch (with
    non-persistent workers, which copy the dataset when an epoch starts).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        recipe: Recipe,
        augment: dict[str, list[str]] | None,
        class_names: Sequence[str],
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.recipe = recipe
        self.class_names = list(class_names)
        self.class_index = _class_index(self.samples, self.class_names)
        self.augment = {cls: frozenset(augs) for cls, augs in (augment or {}).items()}
        for cls, augs in self.augment.items():
            bad = sorted(augs - set(AUGMENTATIONS))
            if bad:
                raise ConfigError(
                    f"train.augment.{cls}: unknown augmentation {bad[0]!r}",
                    hint=f"known: {', '.join(AUGMENTATIONS)}",
                )
            h, w = recipe.input_size
            if "rot90" in augs and h != w:
                raise ConfigError(
                    f"train.augment.{cls}: rot90 needs a square input, the model's is {h}x{w}"
                )
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _generator(self, index: int) -> torch.Generator:
        # SeedSequence mixes the three numbers well; nearby (epoch, index) pairs stay unrelated.
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        g = torch.Generator()
        g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        return g

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = torch.from_numpy(preprocess_bgr(read_image(sample.path), self.recipe))
        augs = self.augment.get(sample.cls)
        if augs:
            # Always draw all three numbers, in this order, so a class's stream does not
            # depend on which augmentations are switched on.
            g = self._generator(index)
            hflip = bool(torch.rand((), generator=g) < FLIP_P)
            vflip = bool(torch.rand((), generator=g) < FLIP_P)
            k = int(torch.randint(0, 4, (), generator=g))
            if "hflip" in augs and hflip:
                image = torch.flip(image, dims=(2,))
            if "vflip" in augs and vflip:
                image = torch.flip(image, dims=(1,))
            if "rot90" in augs and k:
                image = torch.rot90(image, k, dims=(1, 2))
            image = image.contiguous()
        return image, self.class_index[sample.cls]


class TestImages(Dataset):
    """(image float32 (3,H,W), mask uint8 (H,W) 0/1, class, image path) for evaluation.

    The mask is at model size (nearest-neighbour), zeros for normal images. The
    class is its index in `class_names` when given, else the class name.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        samples: Sequence[Sample],
        recipe: Recipe,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.recipe = recipe
        self.class_index = (
            _class_index(self.samples, class_names) if class_names is not None else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int | str, str]:
        sample = self.samples[index]
        image = torch.from_numpy(preprocess_bgr(read_image(sample.path), self.recipe))
        h, w = self.recipe.input_size
        if sample.defect == "good":
            mask = np.zeros((h, w), np.uint8)
        elif sample.mask is None:
            raise DataError(f"{sample.path}: defect image without a mask")
        else:
            mask = read_mask(sample.mask, (h, w))
        cls = self.class_index[sample.cls] if self.class_index is not None else sample.cls
        return image, torch.from_numpy(mask), cls, str(sample.path)
